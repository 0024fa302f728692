//! The WebDriver client against a real headless Chromium and a page served from
//! 127.0.0.1 by a hand-written HTTP/1.1 responder. Skips without Chromium (fails
//! under `SUBSTRUCT_REQUIRE_SYSTEM_TESTS=1`).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use substruct_testkit::gate::gate;
use substruct_testkit::webdriver::{is_error, Browser, WebDriverError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(10);

/// A form, a button whose click writes a greeting via JS, a `<script>` holding an
/// escaped `</script><script>alert(1)</script>`, and an element that appears later.
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Substruct test page</title></head>
<body>
<form id="form" onsubmit="return false">
  <label>Name <input id="name" name="name" value="prefilled"></label>
  <input id="hidden" type="hidden" name="token" value="t0k3n">
  <button id="greet" type="button">Greet</button>
</form>
<p id="out">nobody yet</p>
<ul><li class="item">one</li><li class="item">two</li><li class="item">three</li></ul>
<p id="gone" style="display:none">invisible</p>
<script>
  window.escaped = "\u003c/script\u003e\u003cscript\u003ealert(1)\u003c/script\u003e";
  document.getElementById("greet").addEventListener("click", function () {
    document.getElementById("out").textContent =
      "Hello, " + document.getElementById("name").value + "!";
  });
  setTimeout(function () {
    var p = document.createElement("p");
    p.id = "late";
    p.textContent = "arrived late";
    document.body.appendChild(p);
  }, 300);
</script>
</body></html>
"#;

/// Serves [`PAGE`] at `/` (with a `Set-Cookie`) and 404 elsewhere, one request per
/// connection, until the test ends.
async fn serve_page() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head only (bounded); these requests carry no body.
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let response = if path == "/" {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                         Set-Cookie: session=abc123; Path=/\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
                        PAGE.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_owned()
                };
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    addr
}

async fn start() -> Option<Browser> {
    if !gate(Browser::why_unavailable()) {
        return None;
    }
    let started = Instant::now();
    let browser = Browser::start().await.unwrap();
    eprintln!("browser started in {:?}", started.elapsed());
    Some(browser)
}

#[tokio::test]
async fn drives_a_real_page_form_click_script_screenshot_cookies() {
    let Some(browser) = start().await else {
        return;
    };
    let addr = serve_page().await;
    let url = format!("http://{addr}/");
    browser.goto(&url).await.unwrap();
    assert_eq!(browser.current_url().await.unwrap(), url);
    assert_eq!(browser.title().await.unwrap(), "Substruct test page");
    assert!(browser
        .source()
        .await
        .unwrap()
        .contains(r#"<p id="out">nobody yet</p>"#));

    // The form: clear, type, click; the JS handler changes the text.
    let form = browser.find("#form").await.unwrap();
    let name = form.find("#name").await.unwrap();
    assert_eq!(
        name.attr("value").await.unwrap().as_deref(),
        Some("prefilled")
    );
    name.clear().await.unwrap();
    name.send_keys("Ada <b>&</b>").await.unwrap();
    assert_eq!(name.prop("value").await.unwrap(), json!("Ada <b>&</b>"));
    assert_eq!(name.attr("nope").await.unwrap(), None);
    browser.find("#greet").await.unwrap().click().await.unwrap();
    let text = browser.wait_for_text("#out", "Hello", WAIT).await.unwrap();
    assert_eq!(text, "Hello, Ada <b>&</b>!");
    assert!(browser.find_all("#out b").await.unwrap().is_empty());

    // Lists, visibility, late elements.
    let items = browser.find_all("li.item").await.unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[2].text().await.unwrap(), "three");
    assert!(items[0].is_displayed().await.unwrap());
    assert!(!browser
        .find("#gone")
        .await
        .unwrap()
        .is_displayed()
        .await
        .unwrap());
    let late = browser.wait_for_element("#late", WAIT).await.unwrap();
    assert_eq!(late.text().await.unwrap(), "arrived late");

    // Scripts: arguments (an element among them) and results; the escaped string
    // stayed a string and ran nothing.
    let sum = browser
        .execute(
            "return arguments[0] + arguments[1];",
            &[json!(2), json!(40)],
        )
        .await
        .unwrap();
    assert_eq!(sum, json!(42));
    let id = browser
        .execute("return arguments[0].id;", &[items[1].as_arg()])
        .await
        .unwrap();
    assert_eq!(id, json!(""));
    let tag = browser
        .execute("return arguments[0].tagName;", &[name.as_arg()])
        .await
        .unwrap();
    assert_eq!(tag, json!("INPUT"));
    assert_eq!(
        browser
            .execute("return window.escaped;", &[])
            .await
            .unwrap(),
        json!("</script><script>alert(1)</script>")
    );
    assert_eq!(browser.alert_text().await.unwrap(), None);

    // Screenshots are PNGs.
    let png = browser.screenshot_png().await.unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let shot = tempfile::tempdir().unwrap();
    let path = shot.path().join("page.png");
    browser.save_screenshot(&path).await.unwrap();
    assert!(std::fs::read(&path).unwrap().starts_with(b"\x89PNG"));

    // The cookie the page set is visible; deleting clears it.
    assert_eq!(
        browser.cookie("session").await.unwrap().as_deref(),
        Some("abc123")
    );
    assert!(!browser.cookies().await.unwrap().is_empty());
    browser.delete_all_cookies().await.unwrap();
    assert!(browser.cookies().await.unwrap().is_empty());

    browser.close().await.unwrap();
}

#[tokio::test]
async fn alerts_are_seen_and_errors_name_the_command() {
    let Some(browser) = start().await else {
        return;
    };
    let addr = serve_page().await;
    browser.goto(&format!("http://{addr}/")).await.unwrap();

    let err = browser.find("#missing").await.unwrap_err();
    let wd = err.downcast_ref::<WebDriverError>().unwrap();
    assert_eq!(wd.error, "no such element");
    assert!(
        format!("{err:#}").contains(r##"find "#missing""##),
        "{err:#}"
    );

    let started = Instant::now();
    let err = browser
        .wait_for_element("#never", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<substruct_testkit::TimedOut>().is_some());
    assert!(started.elapsed() < WAIT);
    let err = browser
        .wait_for_text("#out", "never", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("nobody yet"), "{err:#}");

    // An alert stays open until accepted, and blocks other commands meanwhile.
    assert_eq!(browser.accept_alert().await.unwrap(), None);
    browser
        .execute("setTimeout(function () { alert('boom'); }, 0);", &[])
        .await
        .unwrap();
    let text = substruct_testkit::poll("the alert", WAIT, Duration::from_millis(50), || async {
        browser.alert_text().await.unwrap()
    })
    .await
    .unwrap();
    assert_eq!(text, "boom");
    let err = browser.title().await.unwrap_err();
    assert!(is_error(&err, "unexpected alert open"), "{err:#}");
    assert_eq!(
        browser.accept_alert().await.unwrap().as_deref(),
        Some("boom")
    );
    assert_eq!(browser.alert_text().await.unwrap(), None);
    assert_eq!(browser.title().await.unwrap(), "Substruct test page");

    browser.close().await.unwrap();
}
