//! How many shards move when a node joins or leaves. Rendezvous hashing
//! should move little more than the minimum: the shards the new node must
//! take, or the shards the leaving node held. Run with `--nocapture` to see
//! the figures.

use crate::map::{ClusterMap, NodeId, NodeState};
use crate::placement::Placer;
use crate::profile::Profile;
use crate::testutil::{id, map_of, node, object_key, rs};

const SEGMENTS: u64 = 10_000;
/// Movement may exceed the minimum by this factor (a node entering a site
/// occasionally displaces a chain of shards inside that site).
const MOVEMENT_OVER_MINIMUM_MAX: f64 = 2.0;

struct Movement {
    /// Shards whose holder changed (including to or from unplaced).
    moved: usize,
    /// The minimum: shards on the new node, or on the node that left.
    minimum: usize,
    /// Shards that moved although both old and new holder are outside the
    /// changed site.
    moved_elsewhere: usize,
    total: usize,
}

fn measure(
    before: &ClusterMap,
    after: &ClusterMap,
    profile: &Profile,
    changed: NodeId,
) -> Movement {
    let site = before
        .site_of(changed)
        .or(after.site_of(changed))
        .unwrap()
        .to_owned();
    let outside = |map: &ClusterMap, holder: Option<NodeId>| {
        holder.is_some_and(|n| map.site_of(n) != Some(site.as_str()))
    };
    let (a, b) = (
        Placer::new(before, profile).unwrap(),
        Placer::new(after, profile).unwrap(),
    );
    let mut m = Movement {
        moved: 0,
        minimum: 0,
        moved_elsewhere: 0,
        total: 0,
    };
    for i in 0..SEGMENTS {
        let key = object_key(i);
        let (old, new) = (a.place(&key, 0), b.place(&key, 0));
        for (o, n) in old.holders.iter().zip(&new.holders) {
            m.total += 1;
            if o != n {
                m.moved += 1;
                if outside(before, *o) || outside(after, *n) {
                    m.moved_elsewhere += 1;
                }
            }
            if *o == Some(changed) || *n == Some(changed) {
                m.minimum += 1;
            }
        }
    }
    m
}

fn report(what: &str, m: &Movement) -> f64 {
    let moved = m.moved as f64 / m.total as f64;
    let minimum = m.minimum as f64 / m.total as f64;
    let ratio = moved / minimum;
    println!(
        "movement, {what}: {:.2}% of {} shards changed holder; minimum {:.2}%; ratio {ratio:.2}; \
         moved outside the changed site: {}",
        moved * 100.0,
        m.total,
        minimum * 100.0,
        m.moved_elsewhere
    );
    ratio
}

fn with_node_removed(map: &ClusterMap, id: NodeId) -> ClusterMap {
    map.with_node_state(id, NodeState::Removed).unwrap()
}

#[test]
fn adding_a_node_moves_about_its_share() {
    let before = map_of(&[3, 3, 3]);
    let new = id(0, 3);
    let after = before.with_node(node(new, "a")).unwrap();
    let m = measure(&before, &after, &rs(5, 4), new);
    let ratio = report("3x3 RS(5,4), add a node to site a", &m);
    // The new node's fair share: 3 shards of 9 per segment over 4 nodes.
    let share = m.minimum as f64 / m.total as f64;
    assert!((share - 1.0 / 12.0).abs() < 0.01, "{share}");
    assert!(ratio <= MOVEMENT_OVER_MINIMUM_MAX, "{ratio}");
    assert_eq!(m.moved_elsewhere, 0, "sites b and c must not move");
}

#[test]
fn removing_a_node_moves_about_its_shards() {
    // From 3x3 the map drops to 8 nodes for 9 shards: the leaving node's
    // shards cannot go anywhere (site loss tolerance forbids crowding b, c,
    // and they have no free node anyway), so they become unplaced.
    let before = map_of(&[3, 3, 3]);
    let gone = id(0, 1);
    let after = with_node_removed(&before, gone);
    let m = measure(&before, &after, &rs(5, 4), gone);
    let ratio = report("3x3 RS(5,4), remove a node from site a (degraded)", &m);
    assert!(ratio <= MOVEMENT_OVER_MINIMUM_MAX, "{ratio}");
    assert_eq!(m.moved_elsewhere, 0, "sites b and c must not move");

    // With a spare node per site the shares stay 3 + 3 + 3.
    let before = map_of(&[4, 4, 4]);
    let after = with_node_removed(&before, gone);
    let m = measure(&before, &after, &rs(5, 4), gone);
    let ratio = report("3x4 RS(5,4), remove a node from site a", &m);
    assert!(ratio <= MOVEMENT_OVER_MINIMUM_MAX, "{ratio}");
    assert_eq!(m.moved_elsewhere, 0, "sites b and c must not move");
}

#[test]
fn a_node_going_down_and_up_again_changes_nothing_else() {
    let map = map_of(&[3, 3, 3]);
    let gone = id(1, 2);
    let down = map.with_node_state(gone, NodeState::Down).unwrap();
    let back = down.with_node_state(gone, NodeState::Up).unwrap();
    let (a, b) = (
        Placer::new(&map, &rs(5, 4)).unwrap(),
        Placer::new(&back, &rs(5, 4)).unwrap(),
    );
    for i in 0..1000 {
        assert_eq!(a.place(&object_key(i), 0), b.place(&object_key(i), 0));
    }
    let m = measure(&map, &down, &rs(5, 4), gone);
    report("3x3 RS(5,4), a node goes down", &m);
    assert_eq!(m.moved_elsewhere, 0);
}
