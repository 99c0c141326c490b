//! A medium error (EIO from a checksumming filesystem) on a shard read is
//! damage to that shard: DATA_LOSS, quarantined, counted — never INTERNAL,
//! which would leave the bad copy in place and unrepaired.
//!
//! The node's data directory is a loop-mounted btrfs image; one byte of the
//! shard's data block is flipped in the image underneath the filesystem, so
//! btrfs's data checksum fails and `read` returns EIO, as a failing disk
//! sector would. Needs root, `mount` and `mkfs.btrfs` (`./run test`
//! installs btrfs-progs).

use std::path::Path;
use std::process::Command;

use kura_proto::shards_client::ShardState;

use crate::harness::{TestNode, shard};

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e} (root and btrfs-progs are needed)"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Unmounts on drop, so a failed test leaves no mount behind.
struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[tokio::test]
async fn eio_on_a_shard_read_is_data_loss_and_quarantine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.img");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mount point");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(200 << 20))
        .expect("image file");
    let (img, at) = (image.to_str().expect("utf-8"), mnt.to_str().expect("utf-8"));
    sh(&["mkfs.btrfs", "-q", "-m", "single", "-d", "single", img]);
    sh(&["mount", "-o", "loop", img, at]);
    let mounted = Mounted(&mnt);

    let mut t = TestNode::start_with(|c| c.data_dir = mnt.join("node")).await;
    let (id, bytes) = shard(40, 0, 2, 128 * 1024, 7);
    let (other, other_bytes) = shard(40, 0, 3, 128 * 1024, 7);
    t.client.put_shard(bytes.clone(), false).await.expect("put");
    t.client
        .put_shard(other_bytes.clone(), false)
        .await
        .expect("put other");
    t.stop().await;
    drop(mounted);

    // Under the filesystem: flip one byte of the shard's payload.
    let mut disk = std::fs::read(&image).expect("read image");
    let probe = &bytes[bytes.len() / 2..bytes.len() / 2 + 64];
    let found: Vec<usize> = disk
        .windows(probe.len())
        .enumerate()
        .filter(|(_, w)| *w == probe)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(found.len(), 1, "the payload is on the image once");
    disk[found[0]] ^= 0x40;
    std::fs::write(&image, disk).expect("write image");
    sh(&["mount", "-o", "loop", img, at]);
    let _mounted = Mounted(&mnt);
    t.restart().await;

    let err = t.client.get_shard(&id, None).await.expect_err("EIO");
    assert_eq!(err.code(), Some(tonic::Code::DataLoss), "{err}");
    assert!(err.to_string().contains("failed"), "{err}");
    let info = t.client.stat_shard(&id).await.expect("stat");
    assert_eq!(info.state, ShardState::Corrupt, "quarantined");
    let status = t.client.node_status().await.expect("status");
    assert_eq!(status.corrupt_count, 1);
    // Its neighbour reads fine, and a put of the right bytes repairs it.
    let (_, got) = t.client.get_shard(&other, None).await.expect("other");
    assert_eq!(got, other_bytes);
    let repaired = t
        .client
        .put_shard(bytes.clone(), false)
        .await
        .expect("repair");
    assert!(!repaired.already_present);
    let (_, got) = t.client.get_shard(&id, None).await.expect("repaired");
    assert_eq!(got, bytes);
    t.stop().await;
}
