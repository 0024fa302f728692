//! The web UI in a real browser: headless Chromium driven through chromedriver, against
//! a real nats-server and controller, with machines reported by real prospector runs
//! (the `substruct-prospector` binary on captured /sys trees).
//!
//! `SUBSTRUCT_SCREENSHOTS=DIR` saves the main pages as PNGs there (`deploy/screenshots`
//! regenerates the README's).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{config, connect, credential, register_site_key, Running, TOKEN};
use serde_json::{json, Value};
use sha2::Digest as _;
use substruct_controller::config::{ApiToken, Role};
use substruct_testkit::webdriver::Browser;
use substruct_testkit::NatsServer;
use substruct_wire::Mac;

const VIEWER: &str = "viewer-token";
const SITE: &str = "lab1";
/// Bound for anything a page should show promptly (no wall-clock assertion).
const BOUND: Duration = Duration::from_secs(30);

/// The prospector binary beside this test's executable (`cargo build --workspace --bins`).
fn prospector() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("substruct-prospector");
    path.exists().then_some(path)
}

/// A copy of the `qemu-vm` fixture tree with its identity facts replaced.
fn machine_tree(dir: &Path, vendor: &str, serial: &str, uuid: &str, macs: [&str; 2]) -> PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/qemu-vm");
    let root = dir.join(serial.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
    let status = Command::new("cp")
        .arg("-a")
        .arg(&fixture)
        .arg(&root)
        .status()
        .unwrap();
    assert!(status.success());
    let id = root.join("sys/class/dmi/id");
    std::fs::write(id.join("sys_vendor"), format!("{vendor}\n")).unwrap();
    std::fs::write(id.join("product_serial"), format!("{serial}\n")).unwrap();
    std::fs::write(id.join("product_uuid"), format!("{uuid}\n")).unwrap();
    let devices = root.join("sys/devices/pci0000:00");
    for disk in [
        "0000:00:04.0/virtio1/block/vda/serial",
        "0000:00:05.0/nvme/nvme0/serial",
    ] {
        let path = devices.join(disk);
        let old = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{}-{serial}\n", old.trim())).unwrap();
    }
    for (nic, mac) in ["ens3", "ens6"].iter().zip(macs) {
        std::fs::write(
            root.join("sys/class/net").join(nic).join("address"),
            format!("{mac}\n"),
        )
        .unwrap();
    }
    root
}

/// Runs the real prospector once for `root`, booted through `SITE` with a credential
/// for `mac`.
fn report_with_prospector(bin: &Path, nats: &str, root: &Path, mac: &str) {
    let cred = credential(SITE, mac.parse::<Mac>().unwrap());
    let out = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args([
            "--nats",
            nats,
            "--site",
            SITE,
            "--token",
            cred.as_str(),
            "--once",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "prospector failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn api(method: reqwest::Method, url: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn machine_by_serial(base: &str, serial: &str) -> Value {
    let (status, page) = api(
        reqwest::Method::GET,
        &format!("{base}/api/v1/machines?q={serial}"),
        TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    page["machines"][0].clone()
}

async fn state_of(base: &str, id: &str) -> String {
    let (_, record) = api(
        reqwest::Method::GET,
        &format!("{base}/api/v1/machines/{id}"),
        TOKEN,
        None,
    )
    .await;
    let state = &record["state"];
    state
        .as_str()
        .map(str::to_owned)
        .or_else(|| state.get("name").and_then(Value::as_str).map(str::to_owned))
        .or_else(|| state.as_object().and_then(|o| o.keys().next().cloned()))
        .unwrap_or_default()
}

async fn shot(browser: &Browser, name: &str) {
    if let Ok(dir) = std::env::var("SUBSTRUCT_SCREENSHOTS") {
        std::fs::create_dir_all(&dir).unwrap();
        browser
            .save_screenshot(Path::new(&dir).join(format!("{name}.png")))
            .await
            .unwrap();
    }
}

/// Sets a form field's value (textareas, inputs) the way a paste would.
async fn set_value(browser: &Browser, css: &str, value: &str) {
    let el = browser.find(css).await.unwrap();
    browser
        .execute(
            "arguments[0].value = arguments[1];",
            &[el.as_arg(), json!(value)],
        )
        .await
        .unwrap();
}

/// Waits until the browser's URL holds `needle` (a navigation finished).
async fn wait_url(browser: &Browser, needle: &str) {
    substruct_testkit::poll(
        &format!("the URL to hold {needle:?}"),
        BOUND,
        Duration::from_millis(50),
        || async {
            let url = browser.current_url().await.ok()?;
            url.contains(needle).then_some(())
        },
    )
    .await
    .unwrap();
}

async fn login(browser: &Browser, base: &str, token: &str) {
    browser.goto(&format!("{base}/")).await.unwrap();
    browser
        .wait_for_element("#token", BOUND)
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    browser.find("#login").await.unwrap().click().await.unwrap();
}

async fn logout(browser: &Browser) {
    browser
        .find("form.logout button")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_for_element("#token", BOUND).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_in_a_real_browser() {
    let bin = prospector();
    let why_not = Browser::why_unavailable().or_else(|| {
        bin.is_none().then(|| {
            "substruct-prospector is not built (cargo build --workspace --bins)".to_owned()
        })
    });
    if !substruct_testkit::gate::gate(why_not) {
        return;
    }
    let bin = bin.unwrap();
    let nats = NatsServer::start().unwrap();
    let mut cfg = config(&nats.url());
    cfg.tokens.push(ApiToken {
        token: VIEWER.into(),
        role: Role::Viewer,
    });
    let c = Running::start(cfg).await;
    let base = c.url();
    let client = connect(&nats.url()).await;
    register_site_key(&client, SITE).await;

    // An image and a profile to assign.
    let content = vec![7u8; 5000];
    let sha = hex::encode(sha2::Sha256::digest(&content));
    let (status, _) = api(
        reqwest::Method::POST,
        &format!("{base}/api/v1/images"),
        TOKEN,
        Some(json!({"name": "marker.img", "kind": "disk", "sha256": sha, "size": 5000})),
    )
    .await;
    assert_eq!(status, 201);
    let resp = reqwest::Client::new()
        .put(format!("{base}/api/v1/images/content/{sha}"))
        .bearer_auth(TOKEN)
        .body(content)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let profile = substruct_controller::profile::Profile::from_toml(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/profiles/marker-image.toml"),
        )
        .unwrap(),
    )
    .unwrap();
    let (status, body) = api(
        reqwest::Method::PUT,
        &format!("{base}/api/v1/profiles/marker-image"),
        TOKEN,
        Some(serde_json::to_value(&profile).unwrap()),
    )
    .await;
    assert!(status < 300, "{status} {body}");

    // Two machines, reported by the real prospector: one ordinary, one whose vendor
    // string is a script.
    let dir = tempfile::tempdir().unwrap();
    let a_macs = ["52:54:00:77:00:01", "52:54:00:77:00:02"];
    let b_macs = ["52:54:00:77:00:11", "52:54:00:77:00:12"];
    let xss = "<script>alert(1)</script>";
    let a_root = machine_tree(
        dir.path(),
        "QEMU",
        "UI-SN-0001",
        "6b1f2d9e-0a1b-4c2d-8e3f-000000000001",
        a_macs,
    );
    let b_root = machine_tree(
        dir.path(),
        xss,
        "UI-SN-0002",
        "6b1f2d9e-0a1b-4c2d-8e3f-000000000002",
        b_macs,
    );
    report_with_prospector(&bin, &nats.url(), &a_root, a_macs[0]);
    report_with_prospector(&bin, &nats.url(), &b_root, b_macs[0]);
    let a = machine_by_serial(&base, "UI-SN-0001").await;
    let a_id = a["id"].as_str().unwrap().to_owned();
    let b = machine_by_serial(&base, "UI-SN-0002").await;
    assert_eq!(
        b["vendor"], xss,
        "the report carried the script as the vendor"
    );
    let b_id = b["id"].as_str().unwrap().to_owned();

    // GET / without a session is the login page.
    let resp = reqwest::get(format!("{base}/")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp
        .headers()
        .get("content-security-policy")
        .is_some_and(|v| v.to_str().unwrap().contains("script-src 'self'")));
    assert!(resp.text().await.unwrap().contains("API token"));

    let browser = Browser::start().await.unwrap();

    // A wrong token is refused and sets no session.
    browser.goto(&format!("{base}/")).await.unwrap();
    shot(&browser, "login").await;
    login(&browser, &base, "not-a-token").await;
    browser
        .wait_for_text("p.error", "unknown token", BOUND)
        .await
        .unwrap();
    assert_eq!(browser.cookie("substruct_session").await.unwrap(), None);
    browser.goto(&format!("{base}/ui/machines")).await.unwrap();
    browser.wait_for_element("#token", BOUND).await.unwrap();

    // Log in as admin; find machine A by its serial.
    login(&browser, &base, TOKEN).await;
    browser.wait_for_element("#machines", BOUND).await.unwrap();
    shot(&browser, "machines").await;
    assert_eq!(browser.alert_text().await.unwrap(), None, "no script ran");
    set_value(&browser, "#q", "UI-SN-0001").await;
    browser
        .find("#search")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The click starts a navigation: the unfiltered page (A and B) may still be the
    // one loaded, or the new one may not be parsed yet. Wait for the filtered URL,
    // then for its rows to settle; a filter that let B through never settles at 1.
    wait_url(&browser, "q=UI-SN-0001").await;
    browser
        .wait_for_element(&format!("#m-{a_id}"), BOUND)
        .await
        .unwrap();
    substruct_testkit::poll(
        "the serial search to list exactly machine A's row",
        BOUND,
        Duration::from_millis(50),
        || async {
            let rows = browser.find_all("#machines tbody tr").await.ok()?;
            (rows.len() == 1).then_some(())
        },
    )
    .await
    .unwrap();
    assert!(
        browser
            .find_all(&format!("#m-{b_id}"))
            .await
            .unwrap()
            .is_empty(),
        "machine B is not listed by A's serial"
    );
    browser
        .find(&format!("#m-{a_id} a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_url(&browser, &format!("/ui/machines/{a_id}")).await;

    // Assign it a profile from its page.
    browser.wait_for_element("#assign", BOUND).await.unwrap();
    shot(&browser, "machine").await;
    browser
        .find("#profile option[value='marker-image']")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .find("#assign")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // Assigned (or already installing: an image profile's deploy is ordered at once).
    let assigned = substruct_testkit::poll(
        "the assignment",
        BOUND,
        Duration::from_millis(50),
        || async {
            let s = state_of(&base, &a_id).await;
            (s != "discovered").then_some(s)
        },
    )
    .await
    .unwrap();
    assert!(
        ["assigned", "installing"].contains(&assigned.as_str()),
        "{assigned}"
    );
    if let Err(e) = browser.wait_for_text("#state", &assigned, BOUND).await {
        panic!("{e:#}\n{}", browser.source().await.unwrap_or_default());
    }
    browser
        .wait_for_text("#profile-name", "marker-image", BOUND)
        .await
        .unwrap();

    // The list follows changes live: a release made elsewhere (the API) moves the
    // row without a reload.
    browser.goto(&format!("{base}/ui/machines")).await.unwrap();
    let shown = state_of(&base, &a_id).await;
    browser
        .wait_for_text(&format!("#m-{a_id} td.state"), &shown, BOUND)
        .await
        .unwrap();
    browser
        .execute("window.__sameDocument = 42;", &[])
        .await
        .unwrap();
    // The follow stream is open before the change is made.
    substruct_testkit::poll(
        "the live stream to open",
        BOUND,
        Duration::from_millis(50),
        || async {
            let v = browser
                .execute(
                    "return window.substructLive ? window.substructLive.readyState : -1;",
                    &[],
                )
                .await
                .ok()?;
            (v == json!(1)).then_some(())
        },
    )
    .await
    .unwrap();
    let (status, body) = api(
        reqwest::Method::POST,
        &format!("{base}/api/v1/machines/{a_id}/release"),
        TOKEN,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let released = state_of(&base, &a_id).await;
    assert_eq!(released, "discovered");
    browser
        .wait_for_text(&format!("#m-{a_id} td.state"), &released, BOUND)
        .await
        .unwrap();
    let (status, _) = api(
        reqwest::Method::POST,
        &format!("{base}/api/v1/machines/{a_id}/assign"),
        TOKEN,
        Some(json!({"profile": "marker-image", "no_power": true})),
    )
    .await;
    assert_eq!(status, 200);
    let again = state_of(&base, &a_id).await;
    assert_ne!(again, "discovered");
    browser
        .wait_for_text(&format!("#m-{a_id} td.state"), &again, BOUND)
        .await
        .unwrap();
    assert_eq!(
        browser
            .execute("return window.__sameDocument;", &[])
            .await
            .unwrap(),
        json!(42),
        "the rows changed without a reload"
    );
    // A machine that is not on the page is not fetched: a notice offers a reload.
    let c_macs = ["52:54:00:77:00:21", "52:54:00:77:00:22"];
    let c_root = machine_tree(
        dir.path(),
        "QEMU",
        "UI-SN-0003",
        "6b1f2d9e-0a1b-4c2d-8e3f-000000000003",
        c_macs,
    );
    report_with_prospector(&bin, &nats.url(), &c_root, c_macs[0]);
    browser
        .wait_for_text("#new-machines", "1 machine(s)", BOUND)
        .await
        .unwrap();
    assert_eq!(
        browser.find_all("#machines tbody tr").await.unwrap().len(),
        2,
        "no row was added behind the operator's back"
    );

    // Release it from its page, with a quick wipe.
    browser
        .goto(&format!("{base}/ui/machines/{a_id}"))
        .await
        .unwrap();
    browser
        .find("#wipe option[value='quick']")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .find("#release")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let after =
        substruct_testkit::poll("the release", BOUND, Duration::from_millis(50), || async {
            let s = state_of(&base, &a_id).await;
            (s == "discovered").then_some(s)
        })
        .await
        .unwrap();
    browser
        .wait_for_text("#state", &after, BOUND)
        .await
        .unwrap();
    browser
        .wait_for_text("#timeline", "transition", BOUND)
        .await
        .unwrap();

    // The hostile vendor is text, on the list and on the machine's page.
    browser.goto(&format!("{base}/ui/machines")).await.unwrap();
    let vendor = browser
        .wait_for_element(&format!("#m-{b_id} td.vendor"), BOUND)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(vendor.starts_with(xss), "{vendor:?}");
    assert_eq!(browser.alert_text().await.unwrap(), None, "no script ran");
    browser
        .goto(&format!("{base}/ui/machines/{b_id}"))
        .await
        .unwrap();
    let vendor = browser
        .wait_for_element("#vendor", BOUND)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(vendor, xss);
    assert_eq!(browser.alert_text().await.unwrap(), None, "no script ran");
    // Beside the boot mode: the qemu-vm tree boots BIOS, so no Secure Boot.
    let secure_boot = browser
        .find("#secure-boot")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(secure_boot, "off");
    assert!(browser
        .source()
        .await
        .unwrap()
        .contains("&lt;script&gt;alert(1)&lt;/script&gt;"));

    // A profile with a mistake shows the error at its line, and keeps the text.
    browser
        .goto(&format!("{base}/ui/profiles/new"))
        .await
        .unwrap();
    set_value(
        &browser,
        "#toml",
        "name = \"broken\"\nmethod = \"image\"\nimage = \"marker.img\"\ntarget_disk = 7\n",
    )
    .await;
    browser.find("#save").await.unwrap().click().await.unwrap();
    let error = browser
        .wait_for_element("#error", BOUND)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(error.contains("line 4"), "{error}");
    shot(&browser, "profile-error").await;
    let (status, _) = api(
        reqwest::Method::GET,
        &format!("{base}/api/v1/profiles/broken"),
        TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 404, "nothing saved");

    // A rule's dry run lists the machines it would take.
    browser.goto(&format!("{base}/ui/rules/new")).await.unwrap();
    set_value(
        &browser,
        "#toml",
        "name = \"qemu-ui\"\npriority = 10\nprofile = \"marker-image\"\n\n[match]\nvendor = \"QEMU\"\n",
    )
    .await;
    browser
        .find("#dry-run")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_for_text("#preview", &a_id, BOUND)
        .await
        .unwrap();
    assert!(!browser
        .find("#preview")
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .contains(&b_id));

    // An image uploaded from the page: hashed in the browser, streamed, registered.
    browser.goto(&format!("{base}/ui/images")).await.unwrap();
    let file = dir.path().join("tiny.img");
    let upload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &upload).unwrap();
    set_value(&browser, "#image-name", "tiny.img").await;
    browser
        .find("#image-file")
        .await
        .unwrap()
        .send_keys(file.to_str().unwrap())
        .await
        .unwrap();
    browser
        .find("#upload-button")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_for_text("#images", "tiny.img", BOUND)
        .await
        .unwrap();
    let (_, images) = api(
        reqwest::Method::GET,
        &format!("{base}/api/v1/images"),
        TOKEN,
        None,
    )
    .await;
    let tiny = images
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "tiny.img")
        .unwrap();
    assert_eq!(tiny["sha256"], hex::encode(sha2::Sha256::digest(&upload)));
    assert_eq!(tiny["stored"], true);
    shot(&browser, "images").await;
    browser.goto(&format!("{base}/ui/sites")).await.unwrap();
    browser.wait_for_element("#sites", BOUND).await.unwrap();
    shot(&browser, "sites").await;

    // A viewer sees no action, and the server refuses one anyway.
    logout(&browser).await;
    assert_eq!(browser.cookie("substruct_session").await.unwrap(), None);
    login(&browser, &base, VIEWER).await;
    browser.wait_for_element("#machines", BOUND).await.unwrap();
    browser
        .goto(&format!("{base}/ui/machines/{b_id}"))
        .await
        .unwrap();
    browser.wait_for_element("#timeline", BOUND).await.unwrap();
    assert!(browser.find_all("#actions").await.unwrap().is_empty());
    assert!(browser
        .find_all("form[action$='/action']")
        .await
        .unwrap()
        .is_empty());
    let refused = browser
        .execute(
            "const body = new URLSearchParams({csrf: document.body.dataset.csrf, action: 'retire'});\
             return fetch(arguments[0], {method: 'POST', body}).then(r => r.status);",
            &[json!(format!("/ui/machines/{b_id}/action"))],
        )
        .await
        .unwrap();
    assert_eq!(refused, json!(403));
    assert_ne!(state_of(&base, &b_id).await, "retired");
    browser.close().await.unwrap();

    // Without the form's CSRF token an admin's cookie changes nothing.
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{base}/ui/machines/{b_id}/action"))
        .header("cookie", format!("substruct_session={TOKEN}"))
        .form(&[("action", "retire")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = http
        .post(format!("{base}/ui/machines/{b_id}/action"))
        .header("cookie", format!("substruct_session={TOKEN}"))
        .header("origin", "http://evil.example")
        .form(&[
            ("action", "retire"),
            ("csrf", substruct_controller::ui::csrf_token(TOKEN).as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "a cross-origin post is refused");
    assert_ne!(state_of(&base, &b_id).await, "retired");
    c.stop().await;
}
