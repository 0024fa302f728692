//! `GET /credential?token=CREDENTIAL`: a fresh boot credential for the same boot, for a
//! prospector that waits longer than a credential lives (the leaf node closes a
//! connection when its JWT expires). The answer is the renewed JWT (one line, text); it
//! names the same MAC and the same boot user key, so the prospector keeps its seed, its
//! inbox and its command subject. Served only to the address leased to the
//! credential's MAC (as `/boot.ipxe` is), only for credentials this edge's key signed
//! for this site (an expired one renews too: that asker could fetch a whole new boot
//! script anyway). Anything else: 403, or 404 when the edge has no site key.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use substruct_wire::BootCredential;

use super::HttpState;

/// The route's path.
pub const PATH: &str = "/credential";

pub(super) async fn renew_credential(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(key) = state.inner.site_key.as_deref() else {
        return (StatusCode::NOT_FOUND, "this edge has no site key\n").into_response();
    };
    let site = &state.inner.settings.site;
    let refused = |why: &str| {
        tracing::warn!(%peer, why, "credential renewal refused");
        (StatusCode::FORBIDDEN, "credential renewal refused\n").into_response()
    };
    let Some(credential) = query
        .get("token")
        .and_then(|t| BootCredential::new(t.trim()).ok())
    else {
        return refused("no well-formed credential");
    };
    let now = crate::site_key::unix_now();
    let (renewed, claims) = match credential.renew(
        key,
        site,
        now,
        substruct_wire::credential::DEFAULT_LIFETIME_SECS,
    ) {
        Ok(r) => r,
        Err(e) => return refused(&e.to_string()),
    };
    if !state.inner.binding.holds(peer.ip(), &claims.mac) {
        return refused("the asker is not the address leased to the credential's MAC");
    }
    tracing::info!(%peer, mac = %claims.mac, expires = claims.expires_unix, "boot credential renewed");
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{renewed}\n"),
    )
        .into_response()
}
