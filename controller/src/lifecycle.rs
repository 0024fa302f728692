//! The machine lifecycle: one pure function, [`transition`], decides every change of
//! state. No I/O, no clock; the caller stores the new state and writes the event.
//!
//! ```text
//! discovered ─assign→ assigned ─install-started→ installing ─done→ deployed
//!      ↑                 │ ↺ assign                  │                 │
//!      └──── release ────┴───────────────────────────┴─────────────────┘
//! fail (from discovered/assigned/installing/deployed) → failed{reason}
//! reinstall (deployed/installing/failed with a profile) → assigned
//! retire (from anything but retired) → retired (final)
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a machine is in its lifecycle. Stored as JSON with a `state` tag:
/// `{"state":"assigned","profile":"debian12-preseed"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum State {
    /// Known and waiting for a profile (from a rule or an operator).
    Discovered,
    /// A profile is chosen; the next network boot starts its install.
    Assigned { profile: String },
    /// The installer fetched its files (or the prospector started the image deploy).
    Installing { profile: String },
    /// The install called back `done`; the machine boots from its disk.
    Deployed { profile: String },
    /// Something went wrong; `profile` is the one it had, if any.
    Failed {
        reason: String,
        profile: Option<String>,
    },
    /// Out of service for good: no transition leaves this state.
    Retired,
}

impl State {
    /// `discovered`, `assigned`, `installing`, `deployed`, `failed` or `retired`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Discovered => "discovered",
            Self::Assigned { .. } => "assigned",
            Self::Installing { .. } => "installing",
            Self::Deployed { .. } => "deployed",
            Self::Failed { .. } => "failed",
            Self::Retired => "retired",
        }
    }

    /// The machine's profile, in every state that has one.
    pub fn profile(&self) -> Option<&str> {
        match self {
            Self::Assigned { profile }
            | Self::Installing { profile }
            | Self::Deployed { profile } => Some(profile),
            Self::Failed { profile, .. } => profile.as_deref(),
            Self::Discovered | Self::Retired => None,
        }
    }

    /// Whether the machine's install token is honoured: only while `assigned` or
    /// `installing` (the token expires when the machine leaves them).
    pub fn token_valid(&self) -> bool {
        matches!(self, Self::Assigned { .. } | Self::Installing { .. })
    }
}

impl fmt::Display for State {
    /// `discovered`, `assigned (debian12)`, `failed (disk not found)`, …
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Discovered | Self::Retired => f.write_str(self.name()),
            Self::Assigned { profile }
            | Self::Installing { profile }
            | Self::Deployed { profile } => write!(f, "{} ({profile})", self.name()),
            Self::Failed { reason, .. } => write!(f, "failed ({reason})"),
        }
    }
}

/// Something that happens to a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Event {
    /// An operator or a rule chose a profile.
    Assign { profile: String },
    /// The installer fetched its first file, or the prospector began a deploy.
    InstallStarted,
    /// The install or deploy called back `done`.
    Done,
    /// The install, deploy or an operator reported a failure.
    Fail { reason: String },
    /// Give the machine back: it returns to `discovered`.
    Release,
    /// Install the same profile again.
    Reinstall,
    /// Take the machine out of service for good.
    Retire,
}

impl Event {
    /// `assign`, `install-started`, `done`, `fail`, `release`, `reinstall` or `retire`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Assign { .. } => "assign",
            Self::InstallStarted => "install-started",
            Self::Done => "done",
            Self::Fail { .. } => "fail",
            Self::Release => "release",
            Self::Reinstall => "reinstall",
            Self::Retire => "retire",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An event that is not legal in the machine's current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {event} a machine that is {state}")]
pub struct IllegalTransition {
    /// The state, as displayed (`failed (disk not found)`).
    pub state: String,
    /// The event's name (`install-started`).
    pub event: String,
}

/// The state after `event`, or why `event` is not legal in `state`.
pub fn transition(state: &State, event: &Event) -> Result<State, IllegalTransition> {
    use Event as E;
    use State as S;
    let next = match (state, event) {
        (S::Discovered | S::Assigned { .. }, E::Assign { profile }) => S::Assigned {
            profile: profile.clone(),
        },
        (S::Assigned { profile }, E::InstallStarted) => S::Installing {
            profile: profile.clone(),
        },
        (S::Installing { profile }, E::Done) => S::Deployed {
            profile: profile.clone(),
        },
        (
            S::Discovered | S::Assigned { .. } | S::Installing { .. } | S::Deployed { .. },
            E::Fail { reason },
        ) => S::Failed {
            reason: reason.clone(),
            profile: state.profile().map(str::to_owned),
        },
        (
            S::Assigned { .. } | S::Installing { .. } | S::Deployed { .. } | S::Failed { .. },
            E::Release,
        ) => S::Discovered,
        (
            S::Deployed { profile }
            | S::Installing { profile }
            | S::Failed {
                profile: Some(profile),
                ..
            },
            E::Reinstall,
        ) => S::Assigned {
            profile: profile.clone(),
        },
        (S::Retired, E::Retire) => return Err(illegal(state, event)),
        (_, E::Retire) => S::Retired,
        _ => return Err(illegal(state, event)),
    };
    Ok(next)
}

fn illegal(state: &State, event: &Event) -> IllegalTransition {
    IllegalTransition {
        state: state.to_string(),
        event: event.name().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn states() -> Vec<State> {
        vec![
            State::Discovered,
            State::Assigned {
                profile: "p".into(),
            },
            State::Installing {
                profile: "p".into(),
            },
            State::Deployed {
                profile: "p".into(),
            },
            State::Failed {
                reason: "boom".into(),
                profile: Some("p".into()),
            },
            State::Retired,
        ]
    }

    fn events() -> Vec<Event> {
        vec![
            Event::Assign {
                profile: "q".into(),
            },
            Event::InstallStarted,
            Event::Done,
            Event::Fail { reason: "x".into() },
            Event::Release,
            Event::Reinstall,
            Event::Retire,
        ]
    }

    /// The expected outcome of every (state, event) pair, written out by hand. Columns:
    /// assign, install-started, done, fail, release, reinstall, retire.
    /// `-` is illegal; otherwise the resulting state's Display.
    const TABLE: [[&str; 7]; 6] = [
        // discovered
        ["assigned (q)", "-", "-", "failed (x)", "-", "-", "retired"],
        // assigned (p)
        [
            "assigned (q)",
            "installing (p)",
            "-",
            "failed (x)",
            "discovered",
            "-",
            "retired",
        ],
        // installing (p)
        [
            "-",
            "-",
            "deployed (p)",
            "failed (x)",
            "discovered",
            "assigned (p)",
            "retired",
        ],
        // deployed (p)
        [
            "-",
            "-",
            "-",
            "failed (x)",
            "discovered",
            "assigned (p)",
            "retired",
        ],
        // failed (boom) with profile p
        ["-", "-", "-", "-", "discovered", "assigned (p)", "retired"],
        // retired
        ["-", "-", "-", "-", "-", "-", "-"],
    ];

    #[test]
    fn every_state_and_event() {
        let mut checked = 0;
        for (row, state) in states().iter().enumerate() {
            for (col, event) in events().iter().enumerate() {
                let expected = TABLE[row][col];
                let got = transition(state, event);
                match (expected, got) {
                    ("-", Err(e)) => {
                        assert_eq!(e.state, state.to_string());
                        assert_eq!(e.event, event.name());
                    }
                    ("-", Ok(next)) => panic!("{state} + {event} gave {next}, expected illegal"),
                    (want, Ok(next)) => assert_eq!(next.to_string(), want, "{state} + {event}"),
                    (want, Err(e)) => panic!("{state} + {event}: {e}, expected {want}"),
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 42);
    }

    #[test]
    fn fail_keeps_the_profile_and_failed_without_profile_cannot_reinstall() {
        let failed = transition(
            &State::Installing {
                profile: "p".into(),
            },
            &Event::Fail {
                reason: "disk not found".into(),
            },
        )
        .unwrap();
        assert_eq!(
            failed,
            State::Failed {
                reason: "disk not found".into(),
                profile: Some("p".into())
            }
        );
        assert_eq!(failed.to_string(), "failed (disk not found)");
        let bare = transition(&State::Discovered, &Event::Fail { reason: "r".into() }).unwrap();
        assert_eq!(bare.profile(), None);
        let err = transition(&bare, &Event::Reinstall).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot reinstall a machine that is failed (r)"
        );
        assert_eq!(
            transition(&State::Retired, &Event::Retire)
                .unwrap_err()
                .to_string(),
            "cannot retire a machine that is retired"
        );
    }

    #[test]
    fn names_profiles_and_tokens() {
        let names: Vec<_> = states().iter().map(State::name).collect();
        assert_eq!(
            names,
            [
                "discovered",
                "assigned",
                "installing",
                "deployed",
                "failed",
                "retired"
            ]
        );
        let tokens: Vec<_> = states().iter().map(State::token_valid).collect();
        assert_eq!(tokens, [false, true, true, false, false, false]);
        let profiles: Vec<_> = states().iter().map(|s| s.profile().is_some()).collect();
        assert_eq!(profiles, [false, true, true, true, true, false]);
        let names: Vec<_> = events().iter().map(Event::name).collect();
        assert_eq!(
            names,
            [
                "assign",
                "install-started",
                "done",
                "fail",
                "release",
                "reinstall",
                "retire"
            ]
        );
    }

    #[test]
    fn json_form() {
        let s = State::Assigned {
            profile: "debian12".into(),
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"state":"assigned","profile":"debian12"}"#);
        assert_eq!(serde_json::from_str::<State>(&json).unwrap(), s);
        assert_eq!(
            serde_json::to_string(&State::Discovered).unwrap(),
            r#"{"state":"discovered"}"#
        );
        let f: State =
            serde_json::from_str(r#"{"state":"failed","reason":"r","profile":null}"#).unwrap();
        assert_eq!(
            f,
            State::Failed {
                reason: "r".into(),
                profile: None
            }
        );
    }

    fn any_event() -> impl Strategy<Value = Event> {
        prop_oneof![
            "[a-c]".prop_map(|profile| Event::Assign { profile }),
            Just(Event::InstallStarted),
            Just(Event::Done),
            "[x-z]".prop_map(|reason| Event::Fail { reason }),
            Just(Event::Release),
            Just(Event::Reinstall),
            Just(Event::Retire),
        ]
    }

    proptest! {
        /// Under any event sequence: retired is final, a machine is deployed only right
        /// after `done` in `installing`, installs start only from `assigned`, and every
        /// state other than discovered/retired keeps the profile it was reached with.
        #[test]
        fn random_sequences(events in proptest::collection::vec(any_event(), 0..40)) {
            let mut state = State::Discovered;
            for event in &events {
                let before = state.clone();
                match transition(&before, event) {
                    Ok(next) => {
                        prop_assert!(before != State::Retired);
                        if let State::Deployed { profile } = &next {
                            prop_assert_eq!(event, &Event::Done);
                            prop_assert_eq!(before.profile(), Some(profile.as_str()));
                        }
                        if matches!(next, State::Installing { .. }) {
                            prop_assert!(
                                matches!(before, State::Assigned { .. }),
                                "installing from {}",
                                before
                            );
                        }
                        if matches!(event, Event::Reinstall | Event::InstallStarted | Event::Fail { .. }) {
                            prop_assert_eq!(next.profile(), before.profile());
                        }
                        state = next;
                    }
                    Err(e) => prop_assert_eq!(e.state, before.to_string()),
                }
            }
        }
    }
}
