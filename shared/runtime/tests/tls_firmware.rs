//! The TLS a UEFI firmware speaks, against our server, with a real TLS client:
//! `openssl s_client` limited to what EDK2's TLS offers (TLS 1.2, no elliptic curves:
//! `DHE-RSA-AES256-GCM-SHA384`). The firmware profile agrees it and verifies the
//! site's certificate; the modern profile (the controller's API) refuses it; a modern
//! client still gets ECDHE from the firmware profile.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use substruct_runtime::tls::{server_config, Clients, TlsIncoming, TlsPaths};
use substruct_testkit::nats_topology::TlsFiles;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves one answer per connection: reads a request line, writes `hello`.
async fn serve(clients: Clients, tls: &TlsFiles) -> Result<SocketAddr> {
    let config = server_config(
        &TlsPaths {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
        },
        clients,
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mut incoming = TlsIncoming::new(listener, Arc::clone(&config), "test")?;
    let addr = incoming.local_addr();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = incoming.accept().await;
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.0 200 OK\r\ncontent-length: 6\r\n\r\nhello\n")
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// `openssl s_client` with `args` against `addr`, verifying with the CA; its output.
fn s_client(addr: SocketAddr, ca: &Path, args: &[&str]) -> Result<(bool, String)> {
    let mut child = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-CAfile")
        .arg(ca)
        .args([
            "-verify_return_error",
            "-verify_ip",
            "127.0.0.1",
            "-ign_eof",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running openssl s_client (apt-get install openssl)")?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"GET / HTTP/1.0\r\n\r\n");
    }
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

const EDK2_LIKE: &[&str] = &["-tls1_2", "-cipher", "DHE-RSA-AES256-GCM-SHA384"];

#[tokio::test(flavor = "multi_thread")]
async fn firmware_profile_agrees_dhe_rsa_and_verifies() -> Result<()> {
    let tls = TlsFiles::generate_rsa(&["127.0.0.1".parse()?])?;
    let addr = serve(Clients::Firmware, &tls).await?;
    let ca = tls.ca.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || s_client(addr, &ca, EDK2_LIKE)).await??;
    if !ok
        || !out.contains("DHE-RSA-AES256-GCM-SHA384")
        || !out.contains("Verify return code: 0 (ok)")
        || !out.contains("hello")
    {
        bail!("the firmware's TLS did not get through:\n{out}");
    }
    // The FFDHE group really is 2048 bits (RFC 7919), as the firmware expects.
    if !out.contains("Server Temp Key: DH, 2048 bits") {
        bail!("no 2048-bit DH key in the handshake:\n{out}");
    }
    // A current client gets ECDHE from the same server.
    let ca = tls.ca.clone();
    let (ok, out) =
        tokio::task::spawn_blocking(move || s_client(addr, &ca, &["-tls1_2"])).await??;
    if !ok || !out.contains("ECDHE-RSA") {
        bail!("a TLS 1.2 client with curves should get ECDHE:\n{out}");
    }
    Ok(())
}

#[test]
fn tells_an_rsa_certificate_from_an_ec_one() -> Result<()> {
    let rsa = TlsFiles::generate_rsa(&["127.0.0.1".parse()?])?;
    let ec = TlsFiles::generate(&["127.0.0.1".parse()?])?;
    let paths = |t: &TlsFiles| TlsPaths {
        cert: t.cert.clone(),
        key: t.key.clone(),
    };
    // Both are signed with SHA-256 by a CA of their own kind; only the key counts.
    assert!(substruct_runtime::tls::has_rsa_key(&paths(&rsa))?);
    assert!(!substruct_runtime::tls::has_rsa_key(&paths(&ec))?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn modern_profile_refuses_dhe() -> Result<()> {
    let tls = TlsFiles::generate_rsa(&["127.0.0.1".parse()?])?;
    let addr = serve(Clients::Modern, &tls).await?;
    let ca = tls.ca.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || s_client(addr, &ca, EDK2_LIKE)).await??;
    if ok || out.contains("hello") {
        bail!("the modern profile agreed DHE:\n{out}");
    }
    Ok(())
}
