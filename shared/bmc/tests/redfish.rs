//! The Redfish driver against sushy-tools' real Redfish emulator (fake systems,
//! HTTPS with a self-signed certificate, bcrypt basic-auth users), and against a
//! small axum BMC for what sushy does not do (sessions, 503, garbage).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use substruct_bmc::{
    Bmc, BmcConfig, BmcDriverKind, BmcError, BootDevice, CertPin, PowerAction, PowerState,
};
use substruct_testkit::sushy::Sushy;

const SYSTEMS: [&str; 3] = [
    "11111111-0000-4000-8000-000000000001",
    "22222222-0000-4000-8000-000000000002",
    "33333333-0000-4000-8000-000000000003",
];

fn cfg(address: &str, password: &str) -> BmcConfig {
    let mut c = BmcConfig::new(BmcDriverKind::Redfish, address, "admin", password);
    // The fake driver applies power changes 1 to 11 s later: apply() waits 4 x this.
    c.timeout = Duration::from_secs(4);
    c.retries = 2;
    c
}

#[tokio::test]
async fn power_actions_and_boot_override_reach_sushy_with_several_systems() -> Result<()> {
    let Some(sushy) = Sushy::start(&SYSTEMS)? else {
        return Ok(());
    };
    // Several systems and none named: the error lists them.
    let err = Bmc::connect(&cfg(&sushy.address(), "secret")).await.err();
    match err {
        Some(BmcError::AmbiguousSystem { choices, .. }) => {
            let mut choices = choices;
            choices.sort();
            assert_eq!(choices, SYSTEMS);
        }
        other => panic!("expected AmbiguousSystem, got {other:?}"),
    }
    let mut wrong = cfg(&sushy.address(), "secret");
    wrong.system_id = Some("nope".to_owned());
    assert!(matches!(
        Bmc::connect(&wrong).await.err(),
        Some(BmcError::SystemNotFound { .. })
    ));

    let mut c = cfg(&sushy.address(), "secret");
    c.system_id = Some(SYSTEMS[1].to_owned());
    let mut bmc = Bmc::connect(&c).await.with_context(|| sushy.log())?;
    assert_eq!(bmc.power_state().await?, PowerState::Off);

    assert_eq!(bmc.apply(PowerAction::On).await?, PowerState::On);
    assert_eq!(sushy.system(SYSTEMS[1])?["PowerState"], "On");
    assert_eq!(
        sushy.system(SYSTEMS[0])?["PowerState"],
        "Off",
        "another system moved"
    );
    assert_eq!(
        sushy.system(SYSTEMS[2])?["PowerState"],
        "Off",
        "another system moved"
    );

    bmc.set_next_boot(BootDevice::Pxe).await?;
    assert_eq!(
        sushy.system(SYSTEMS[1])?["Boot"]["BootSourceOverrideTarget"],
        "Pxe"
    );
    assert_eq!(bmc.next_boot().await?, Some(BootDevice::Pxe));
    bmc.set_next_boot(BootDevice::Disk).await?;
    assert_eq!(
        sushy.system(SYSTEMS[1])?["Boot"]["BootSourceOverrideTarget"],
        "Hdd"
    );

    // Cycle from on: sushy's ForceRestart goes through Off and back to On.
    assert_eq!(bmc.apply(PowerAction::Cycle).await?, PowerState::On);
    assert_eq!(sushy.system(SYSTEMS[1])?["PowerState"], "On");

    assert_eq!(bmc.apply(PowerAction::Off).await?, PowerState::Off);
    assert_eq!(sushy.system(SYSTEMS[1])?["PowerState"], "Off");
    // Off when off: nothing sent, still off.
    assert_eq!(bmc.apply(PowerAction::Off).await?, PowerState::Off);
    assert!(bmc.cert_pin_seen().is_some());
    bmc.close().await;
    Ok(())
}

#[tokio::test]
async fn wrong_credentials_pins_and_a_dead_emulator_are_told_apart() -> Result<()> {
    let Some(sushy) = Sushy::start(&SYSTEMS[..1])? else {
        return Ok(());
    };
    let err = Bmc::connect(&cfg(&sushy.address(), "wrong")).await.err();
    assert!(
        matches!(err, Some(BmcError::AuthFailed { .. })),
        "got {err:?}"
    );

    // Trust on first use: the pin reported is the certificate's sha256 as openssl
    // computes it; connecting again with it works.
    let bmc = Bmc::connect(&cfg(&sushy.address(), "secret")).await?;
    let seen = bmc.cert_pin_seen();
    assert_eq!(seen, Some(sushy.cert_pin()?.parse::<CertPin>()?));
    bmc.close().await;
    let mut pinned = cfg(&sushy.address(), "secret");
    pinned.cert_pin = seen;
    let mut bmc = Bmc::connect(&pinned).await?;
    assert_eq!(bmc.power_state().await?, PowerState::Off);
    bmc.close().await;

    // Another pin: refused before any credential is sent.
    let mut other = cfg(&sushy.address(), "secret");
    other.cert_pin = Some(CertPin([0xAB; 32]));
    match Bmc::connect(&other).await.err() {
        Some(BmcError::CertMismatch {
            expected, found, ..
        }) => {
            assert_eq!(expected, CertPin([0xAB; 32]));
            assert_eq!(Some(found), seen);
        }
        other => panic!("expected CertMismatch, got {other:?}"),
    }

    // Trust on first use holds for the whole connection: the BMC comes back on the
    // same address with another certificate (say, a man in the middle), and the
    // client that learned the first one refuses it.
    let mut tofu = Bmc::connect(&cfg(&sushy.address(), "secret")).await?;
    assert_eq!(tofu.power_state().await?, PowerState::Off);
    let address = sushy.address();
    drop(sushy);
    let Some(imposter) = Sushy::start_on(
        &SYSTEMS[..1],
        address.rsplit(':').next().unwrap_or("0").parse()?,
    )?
    else {
        bail!("sushy-emulator did not restart");
    };
    match tofu.power_state().await.err() {
        Some(BmcError::CertMismatch {
            expected, found, ..
        }) => {
            assert_eq!(Some(expected), seen);
            assert_eq!(found, imposter.cert_pin()?.parse::<CertPin>()?);
        }
        other => panic!("expected CertMismatch, got {other:?}"),
    }

    // The emulator goes away: unreachable (retryable), not a protocol error.
    drop(imposter);
    let err = Bmc::connect(&cfg(&address, "secret")).await.err();
    assert!(
        matches!(err, Some(BmcError::Unreachable { .. })),
        "got {err:?}"
    );
    assert!(err.is_some_and(|e| e.is_retryable()));
    Ok(())
}

fn authorized(f: &Fake, h: &HeaderMap) -> bool {
    h.get("X-Auth-Token").and_then(|v| v.to_str().ok())
        == Some(format!("tok-{}", f.token_gen.load(Ordering::SeqCst)).as_str())
}

/// A tiny Redfish BMC over plain HTTP for what sushy does not do.
#[derive(Default)]
struct Fake {
    logins: AtomicU32,
    deletes: AtomicU32,
    requests: AtomicU32,
    /// Answer every system GET with 401 this many times (expired token).
    expire: AtomicU32,
    /// The token of the current session.
    token_gen: AtomicU32,
    /// What GET /redfish/v1/Systems/a answers: 0 normal, 1 = 503, 2 = garbage, 3 = huge.
    mode: AtomicU32,
}

async fn fake_bmc(fake: Arc<Fake>, systems: Vec<&'static str>) -> Result<String> {
    let root = || {
        Json(json!({
            "Systems": {"@odata.id": "/redfish/v1/Systems"},
            "SessionService": {"@odata.id": "/redfish/v1/SessionService"},
            "Links": {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}},
        }))
    };
    let app = Router::new()
        .route("/redfish/v1/", get(move || async move { root() }))
        .route(
            "/redfish/v1/SessionService/Sessions",
            post(
                |State(f): State<Arc<Fake>>, Json(body): Json<Value>| async move {
                    if body["UserName"] != "admin" || body["Password"] != "secret" {
                        return StatusCode::UNAUTHORIZED.into_response();
                    }
                    let n = f.logins.fetch_add(1, Ordering::SeqCst) + 1;
                    f.token_gen.store(n, Ordering::SeqCst);
                    (
                        StatusCode::CREATED,
                        [
                            ("X-Auth-Token", format!("tok-{n}")),
                            (
                                "Location",
                                format!("/redfish/v1/SessionService/Sessions/{n}"),
                            ),
                        ],
                        Json(json!({"Id": n.to_string()})),
                    )
                        .into_response()
                },
            ),
        )
        .route(
            "/redfish/v1/SessionService/Sessions/{id}",
            axum::routing::delete(|State(f): State<Arc<Fake>>| async move {
                f.deletes.fetch_add(1, Ordering::SeqCst);
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/redfish/v1/Systems",
            get(move |State(f): State<Arc<Fake>>, h: HeaderMap| {
                let systems = systems.clone();
                async move {
                    if !authorized(&f, &h) {
                        return StatusCode::UNAUTHORIZED.into_response();
                    }
                    let members: Vec<Value> = systems
                        .iter()
                        .map(|s| json!({"@odata.id": format!("/redfish/v1/Systems/{s}")}))
                        .collect();
                    Json(json!({"Members": members})).into_response()
                }
            }),
        )
        .route(
            "/redfish/v1/Systems/{id}",
            get(move |State(f): State<Arc<Fake>>, h: HeaderMap| async move {
                f.requests.fetch_add(1, Ordering::SeqCst);
                if f.expire.load(Ordering::SeqCst) > 0 {
                    f.expire.fetch_sub(1, Ordering::SeqCst);
                    f.token_gen.fetch_add(100, Ordering::SeqCst);
                    return StatusCode::UNAUTHORIZED.into_response();
                }
                if !authorized(&f, &h) {
                    return StatusCode::UNAUTHORIZED.into_response();
                }
                let r: Response = match f.mode.load(Ordering::SeqCst) {
                    1 => StatusCode::SERVICE_UNAVAILABLE.into_response(),
                    2 => (StatusCode::OK, "{\"PowerState\": \"On\", trailing garbage")
                        .into_response(),
                    3 => (StatusCode::OK, vec![b' '; 3 * 1024 * 1024]).into_response(),
                    4 => (StatusCode::OK, "[1, 2, 3]").into_response(),
                    _ => Json(json!({"PowerState": "PoweringOn"})).into_response(),
                };
                r
            }),
        )
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}"))
}

fn fast(address: &str, password: &str) -> BmcConfig {
    let mut c = BmcConfig::new(BmcDriverKind::Redfish, address, "admin", password);
    c.timeout = Duration::from_millis(500);
    c.retries = 2;
    c
}

#[tokio::test]
async fn one_session_is_reused_renewed_once_on_401_and_deleted_on_close() -> Result<()> {
    let fake = Arc::new(Fake::default());
    let url = fake_bmc(fake.clone(), vec!["a"]).await?;
    let mut bmc = Bmc::connect(&fast(&url, "secret")).await?;
    for _ in 0..5 {
        // "PoweringOn" is neither on nor off.
        assert_eq!(bmc.power_state().await?, PowerState::Unknown);
    }
    assert_eq!(
        fake.logins.load(Ordering::SeqCst),
        1,
        "one session for six requests"
    );

    // The BMC drops the session: one new login, and the request succeeds.
    fake.expire.store(1, Ordering::SeqCst);
    assert_eq!(bmc.power_state().await?, PowerState::Unknown);
    assert_eq!(fake.logins.load(Ordering::SeqCst), 2);

    // A BMC that keeps refusing: AuthFailed after one re-login, not a loop.
    fake.expire.store(100, Ordering::SeqCst);
    let err = bmc.power_state().await.err();
    assert!(
        matches!(err, Some(BmcError::AuthFailed { .. })),
        "got {err:?}"
    );
    assert_eq!(fake.logins.load(Ordering::SeqCst), 3);
    fake.expire.store(0, Ordering::SeqCst);

    // Never cycle (nor power on) from an unknown state.
    let err = bmc.apply(PowerAction::Cycle).await.err();
    assert!(
        matches!(err, Some(BmcError::StateUnknown { .. })),
        "got {err:?}"
    );
    let err = bmc.apply(PowerAction::On).await.err();
    assert!(
        matches!(err, Some(BmcError::StateUnknown { .. })),
        "got {err:?}"
    );

    bmc.close().await;
    assert_eq!(
        fake.deletes.load(Ordering::SeqCst),
        1,
        "session deleted on close"
    );

    let err = Bmc::connect(&fast(&url, "wrong")).await.err();
    assert!(
        matches!(err, Some(BmcError::AuthFailed { .. })),
        "got {err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn busy_garbage_and_huge_answers_are_bounded_errors() -> Result<()> {
    let fake = Arc::new(Fake::default());
    let url = fake_bmc(fake.clone(), vec!["a"]).await?;
    let mut bmc = Bmc::connect(&fast(&url, "secret")).await?;

    fake.mode.store(1, Ordering::SeqCst);
    let before = fake.requests.load(Ordering::SeqCst);
    let err = bmc.power_state().await.err();
    assert!(matches!(err, Some(BmcError::Busy { .. })), "got {err:?}");
    assert!(err.is_some_and(|e| e.is_retryable()));
    assert_eq!(
        fake.requests.load(Ordering::SeqCst) - before,
        3,
        "1 + 2 retries"
    );

    for mode in [2, 3, 4] {
        fake.mode.store(mode, Ordering::SeqCst);
        let err = bmc.power_state().await.err();
        assert!(
            matches!(err, Some(BmcError::Protocol { .. })),
            "mode {mode}: got {err:?}"
        );
    }
    bmc.close().await;
    Ok(())
}

#[tokio::test]
async fn systems_are_enumerated_never_assumed() -> Result<()> {
    let fake = Arc::new(Fake::default());
    let none = fake_bmc(fake.clone(), vec![]).await?;
    let err = Bmc::connect(&fast(&none, "secret")).await.err();
    assert!(
        matches!(err, Some(BmcError::NoSystem { .. })),
        "got {err:?}"
    );

    let fake = Arc::new(Fake::default());
    let odd = fake_bmc(fake.clone(), vec!["System.Embedded.1"]).await?;
    let bmc = Bmc::connect(&fast(&odd, "secret")).await?;
    match &bmc {
        Bmc::Redfish(r) => assert_eq!(r.system_path(), "/redfish/v1/Systems/System.Embedded.1"),
        Bmc::Ipmi(_) => bail!("not redfish"),
    }
    bmc.close().await;
    Ok(())
}
