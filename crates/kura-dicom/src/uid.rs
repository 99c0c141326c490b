//! UID syntax (PS3.5 9.1): the rules a UID must follow before Kura uses it as
//! a key. A UID that breaks them would still be a string, but two spellings of
//! "the same" UID (a leading zero, a trailing dot) would become two keys, so
//! Kura refuses them at the edge instead.

use std::fmt;

/// Longest UID the standard allows, in characters (PS3.5 9.1).
pub const UID_CHARS_MAX: usize = 64;

/// Which UID rule a value breaks. Positions are 1-based so they read naturally
/// in messages; none of the variants carries the value itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UidProblem {
    /// The value is empty.
    Empty,
    /// More than [`UID_CHARS_MAX`] characters.
    TooLong {
        /// Length of the value, in bytes.
        len: usize,
    },
    /// A character other than a digit or '.'.
    InvalidCharacter {
        /// 1-based byte position of the first such character.
        position: usize,
    },
    /// Two dots in a row, or a leading or trailing dot.
    EmptyComponent {
        /// 1-based number of the empty component.
        component: usize,
    },
    /// A component of several digits that starts with '0'.
    LeadingZero {
        /// 1-based number of the component.
        component: usize,
    },
}

impl fmt::Display for UidProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            UidProblem::Empty => write!(f, "it is empty"),
            UidProblem::TooLong { len } => {
                write!(f, "it is {len} characters long, more than {UID_CHARS_MAX}")
            }
            UidProblem::InvalidCharacter { position } => write!(
                f,
                "character {position} is not a digit or '.' (only digits and dots are allowed)"
            ),
            UidProblem::EmptyComponent { component } => write!(
                f,
                "component {component} is empty (leading, trailing or doubled '.')"
            ),
            UidProblem::LeadingZero { component } => write!(
                f,
                "component {component} has a leading zero (only a lone '0' may start with 0)"
            ),
        }
    }
}

/// Checks `uid` against the UID rules: 1 to 64 characters, only digits and
/// dots, no empty component, no leading zero in a component of several digits.
///
/// The caller strips the value's padding (a trailing NUL or space) first.
pub fn validate_uid(uid: &str) -> Result<(), UidProblem> {
    if uid.is_empty() {
        return Err(UidProblem::Empty);
    }
    if let Some(index) = uid.bytes().position(|b| !(b.is_ascii_digit() || b == b'.')) {
        return Err(UidProblem::InvalidCharacter {
            position: index + 1,
        });
    }
    // Only ASCII is left, so bytes are characters.
    if uid.len() > UID_CHARS_MAX {
        return Err(UidProblem::TooLong { len: uid.len() });
    }
    for (index, component) in uid.split('.').enumerate() {
        if component.is_empty() {
            return Err(UidProblem::EmptyComponent {
                component: index + 1,
            });
        }
        if component.len() > 1 && component.starts_with('0') {
            return Err(UidProblem::LeadingZero {
                component: index + 1,
            });
        }
    }
    Ok(())
}

/// Reads a UID from an element value: strips the padding (a trailing NUL, or
/// a space from careless writers), then checks it with [`validate_uid`].
pub(crate) fn uid_from_bytes(raw: &[u8]) -> Result<String, UidProblem> {
    let end = raw
        .iter()
        .rposition(|&b| b != 0 && b != b' ')
        .map_or(0, |i| i + 1);
    let raw = &raw[..end];
    // Check bytes first so non-UTF-8 garbage is reported by position too.
    if let Some(index) = raw.iter().position(|&b| !(b.is_ascii_digit() || b == b'.')) {
        return Err(UidProblem::InvalidCharacter {
            position: index + 1,
        });
    }
    let uid = String::from_utf8_lossy(raw).into_owned();
    validate_uid(&uid)?;
    Ok(uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_real_uids() {
        for uid in [
            "1.2.840.10008.1.2.1",
            "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322",
            "1.2.826.0.1.3680043.8.498.12406831542731051035295345080039845114",
            "0",
            "1.0.2",
            "2.25.329800735698586629295641978511506172918",
        ] {
            assert_eq!(validate_uid(uid), Ok(()), "{uid}");
        }
    }

    #[test]
    fn names_the_broken_rule() {
        assert_eq!(validate_uid(""), Err(UidProblem::Empty));
        assert_eq!(
            validate_uid("1.2.a"),
            Err(UidProblem::InvalidCharacter { position: 5 })
        );
        assert_eq!(
            validate_uid("1.2 "),
            Err(UidProblem::InvalidCharacter { position: 4 })
        );
        assert_eq!(
            validate_uid(".1.2"),
            Err(UidProblem::EmptyComponent { component: 1 })
        );
        assert_eq!(
            validate_uid("1..2"),
            Err(UidProblem::EmptyComponent { component: 2 })
        );
        assert_eq!(
            validate_uid("1.2."),
            Err(UidProblem::EmptyComponent { component: 3 })
        );
        assert_eq!(
            validate_uid("1.02.3"),
            Err(UidProblem::LeadingZero { component: 2 })
        );
        let long = format!("1.{}", "2".repeat(63));
        assert_eq!(validate_uid(&long), Err(UidProblem::TooLong { len: 65 }));
        let longest = format!("1.{}", "2".repeat(62));
        assert_eq!(validate_uid(&longest), Ok(()));
        // Non-ASCII is reported by position, not echoed.
        assert_eq!(
            validate_uid("1.2.é"),
            Err(UidProblem::InvalidCharacter { position: 5 })
        );
    }

    #[test]
    fn messages_do_not_echo_the_value() {
        let problem = validate_uid("1.2.Smith").unwrap_err();
        assert!(!problem.to_string().contains("Smith"), "{problem}");
    }

    /// One UID component: "0" or a number without a leading zero.
    fn component() -> impl Strategy<Value = String> {
        prop_oneof![Just("0".to_string()), "[1-9][0-9]{0,12}"]
    }

    /// A valid UID of at most 64 characters.
    fn valid_uid() -> impl Strategy<Value = String> {
        prop::collection::vec(component(), 1..12)
            .prop_map(|parts| parts.join("."))
            .prop_filter("at most 64 characters", |uid| uid.len() <= UID_CHARS_MAX)
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        InsertChar(usize, char),
        DoubleDot(usize),
        LeadingDot,
        TrailingDot,
        LeadingZero(usize),
        Lengthen,
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (
                any::<usize>(),
                prop::char::any().prop_filter("not a UID character", |c| {
                    !(c.is_ascii_digit() || *c == '.')
                })
            )
                .prop_map(|(at, c)| Mutation::InsertChar(at, c)),
            any::<usize>().prop_map(Mutation::DoubleDot),
            Just(Mutation::LeadingDot),
            Just(Mutation::TrailingDot),
            any::<usize>().prop_map(Mutation::LeadingZero),
            Just(Mutation::Lengthen),
        ]
    }

    fn apply(uid: &str, mutation: &Mutation) -> String {
        match mutation {
            Mutation::InsertChar(at, c) => {
                let mut chars: Vec<char> = uid.chars().collect();
                let at = at % (chars.len() + 1);
                chars.insert(at, *c);
                chars.into_iter().collect()
            }
            Mutation::DoubleDot(at) => {
                let dots: Vec<usize> = uid.match_indices('.').map(|(i, _)| i).collect();
                match dots.get(at % dots.len().max(1)) {
                    Some(&i) => format!("{}.{}", &uid[..i], &uid[i..]),
                    None => format!("{uid}..1"),
                }
            }
            Mutation::LeadingDot => format!(".{uid}"),
            Mutation::TrailingDot => format!("{uid}."),
            Mutation::LeadingZero(at) => {
                let mut parts: Vec<String> = uid.split('.').map(str::to_string).collect();
                let at = at % parts.len();
                parts[at] = format!("0{}", parts[at]);
                parts.join(".")
            }
            Mutation::Lengthen => {
                let mut long = uid.to_string();
                while long.len() <= UID_CHARS_MAX {
                    long.push_str(".1");
                }
                long
            }
        }
    }

    proptest! {
        #[test]
        fn valid_uids_pass(uid in valid_uid()) {
            prop_assert_eq!(validate_uid(&uid), Ok(()));
        }

        #[test]
        fn mutated_uids_fail(uid in valid_uid(), mutation in mutation()) {
            let bad = apply(&uid, &mutation);
            prop_assert!(validate_uid(&bad).is_err(), "{:?} -> {:?} passed", mutation, bad);
        }
    }
}
