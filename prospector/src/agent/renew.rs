//! Keeps a waiting prospector's NATS login valid. A boot credential lives a few hours
//! and the leaf node closes a connection whose JWT expired, but a prospector may wait
//! for commands for days. Halfway through each credential's lifetime (measured on the
//! monotonic clock from when it was received, so a wrong wall clock in the live image
//! does not matter) the agent asks the edge for a renewal, `GET {edge}/credential?
//! token=CURRENT`; the answer names the same boot user key, so the seed, the inbox and
//! the command subject stay. The new JWT is used from the next (re)connect: the leaf
//! node ends the old connection at the old expiry and the client logs in again at once.
//! A failed renewal is retried with backoff until it works or the agent stops.

use std::time::Duration;

use substruct_runtime::backoff::Backoff;
use substruct_runtime::{error_chain, NatsLogin};
use substruct_wire::BootCredential;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::console::progress;
use super::AgentConfig;
use crate::http_get::{self, BaseUrl};

/// The edge's renewal route (edge-agent `http::renew`).
pub const RENEW_PATH: &str = "/credential";

/// Longest renewal answer read (a credential is at most 1 KiB).
const MAX_ANSWER: usize = 4096;

/// Why one renewal failed.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error("asking the edge")]
    Http(#[source] http_get::HttpError),
    #[error("the edge's answer is longer than {MAX_ANSWER} bytes")]
    TooLong,
    #[error("the edge's answer is not a credential")]
    Credential(#[source] substruct_wire::CredentialError),
}

/// Starts the renewal task when the agent has a login, its token and the edge's URL;
/// the task stops when the returned guard is dropped or `cancel` fires.
pub fn spawn(
    cfg: &AgentConfig,
    http_timeout: Duration,
    cancel: CancellationToken,
) -> Option<DropGuard> {
    let (Some(login), Some(token)) = (cfg.login.clone(), cfg.token.clone()) else {
        return None;
    };
    let Some(edge) = cfg.edge.clone() else {
        progress(format_args!(
            "no edge URL: the NATS login cannot be renewed and ends when the boot credential expires"
        ));
        return None;
    };
    let stop = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = keep_fresh(login, token, edge, http_timeout) => {}
        }
    });
    Some(cancel.drop_guard())
}

/// Renews `token` halfway through each lifetime, forever.
async fn keep_fresh(login: NatsLogin, mut token: BootCredential, edge: BaseUrl, timeout: Duration) {
    loop {
        tokio::time::sleep(half_life(&token)).await;
        let mut backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(60));
        token = loop {
            match renew_once(&edge, &token, timeout).await {
                Ok(fresh) => break fresh,
                Err(e) => {
                    let delay = backoff.next_delay();
                    progress(format_args!(
                        "renewing the boot credential failed ({}); retrying in {delay:?}",
                        error_chain(&e)
                    ));
                    tokio::time::sleep(delay).await;
                }
            }
        };
        login.replace_jwt(token.as_str().to_owned());
        progress(format_args!("boot credential renewed"));
    }
}

/// Half of `token`'s lifetime (`exp - iat`), at least one second.
pub fn half_life(token: &BootCredential) -> Duration {
    let lifetime = token
        .unverified_times()
        .map(|(issued, expires)| expires.saturating_sub(issued))
        .unwrap_or(0);
    Duration::from_secs((lifetime / 2).max(1))
}

/// One renewal: `GET {edge}/credential?token=…`, the answer's one line as a credential.
pub async fn renew_once(
    edge: &BaseUrl,
    token: &BootCredential,
    timeout: Duration,
) -> Result<BootCredential, RenewError> {
    let path = format!("{RENEW_PATH}?token={token}");
    let mut response = http_get::get(edge, &path, timeout)
        .await
        .map_err(RenewError::Http)?;
    let mut body = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = response.read(&mut buf).await.map_err(RenewError::Http)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
        if body.len() > MAX_ANSWER {
            return Err(RenewError::TooLong);
        }
    }
    let text = String::from_utf8_lossy(&body);
    BootCredential::new(text.trim()).map_err(RenewError::Credential)
}
