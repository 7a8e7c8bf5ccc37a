//! The other nodes, over HTTP: one keep-alive client forwards requests to the node that
//! owns their store, and asks a node whether it is alive.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::domain::NodeId;

/// The header every answer carries: the node that decided it (SPEC.md).
pub const NODE_HEADER: &str = "kitara-node";

/// Another node that owns stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node: NodeId,
    /// `http://host:port`, as it advertised itself, without a trailing `/`.
    pub url: Arc<str>,
}

impl Peer {
    /// A node as the table records it; `None` for an id that is not a node id (a row
    /// written by hand).
    pub fn parse(node: &str, advertise_url: &str) -> Option<Self> {
        Some(Peer {
            node: NodeId::parse(node).ok()?,
            url: advertise_url.trim_end_matches('/').into(),
        })
    }
}

/// Why a forwarded request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The node could not be reached: nothing was sent.
    #[error("the node cannot be reached")]
    Unreachable,
    /// The request was sent, and no whole answer came back in time: it may have been
    /// decided.
    #[error("the node did not answer")]
    Lost,
}

/// The client every forward goes through.
#[derive(Clone)]
pub struct Peers {
    client: Client<HttpConnector, Full<Bytes>>,
    /// The longest a forwarded request waits for its answer: the owner answers within
    /// its own bound, so this only cuts a node that died or stalls.
    timeout: Duration,
}

impl Peers {
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self { client, timeout }
    }

    /// Sends `request` and reads its whole answer, within the timeout.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Result<Response<Bytes>, PeerError> {
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                if e.is_connect() {
                    PeerError::Unreachable
                } else {
                    PeerError::Lost
                }
            })?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|_| PeerError::Lost)?;
            Ok(Response::from_parts(parts, body.to_bytes()))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or(Err(PeerError::Lost))
    }

    /// Whether the node at `url` answers `/readyz` with 200 (everything it owns is
    /// loaded), within a second.
    pub async fn is_ready(&self, url: &str) -> bool {
        let Ok(request) = Request::get(format!("{url}/readyz")).body(Full::new(Bytes::new()))
        else {
            return false;
        };
        let probe = self.client.request(request);
        matches!(
            tokio::time::timeout(Duration::from_secs(1), probe).await,
            Ok(Ok(response)) if response.status() == hyper::StatusCode::OK
        )
    }

    /// Whether the node at `url` answers `/healthz` as `node`, within a second: how a
    /// starting node tells a live holder of its id from one that died.
    pub async fn answers_as(&self, url: &str, node: &NodeId) -> bool {
        let Ok(request) = Request::get(format!("{url}/healthz")).body(Full::new(Bytes::new()))
        else {
            return false;
        };
        let probe = self.client.request(request);
        match tokio::time::timeout(Duration::from_secs(1), probe).await {
            Ok(Ok(response)) => response
                .headers()
                .get(NODE_HEADER)
                .is_some_and(|v| v.as_bytes() == node.as_str().as_bytes()),
            _ => false,
        }
    }
}
