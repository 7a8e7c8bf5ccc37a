//! The hyper front end: accepting connections, routing, and the edge checks (layer 1).
//!
//! The service never returns `Err` (hyper would drop the connection): every failure
//! becomes an `ApiError` answer.

mod admin;
mod call;
mod events;
mod forward;
mod openapi;
mod operations;
mod orders;
mod query;
mod request;
mod request_id;
pub mod response;
mod routes;
mod views;

pub use routes::labels as route_labels;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Either;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::app::AppState;
use crate::cluster::NODE_HEADER;
use request::RequestBody;
use response::{ApiError, Body};

pub struct ServerConfig {
    pub max_connections: usize,
    pub request_timeout: Duration,
    pub shutdown_timeout: Duration,
}

/// Serves HTTP on `listener` until `shutdown` resolves, then stops accepting and gives
/// the open connections up to `shutdown_timeout` to finish their requests.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.request_timeout)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    let node = node_header(&state);

    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, for instance: pause rather than spin.
                    crate::warn_summarised!("accept failed", error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let state = state.clone();
        let request_timeout = config.request_timeout;
        let node = node.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let state = state.clone();
            let node = node.clone();
            async move {
                let request = request.map(Either::Left);
                Ok::<_, Infallible>(answer(&state, request, request_timeout, node).await)
            }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }

    drop(listener);
    tracing::info!("no longer accepting connections; draining requests in flight");
    state.closing.send_replace(true);
    if tokio::time::timeout(config.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after the shutdown timeout");
    }
}

/// This node's id, as the `Kitara-Node` of its answers.
fn node_header(state: &AppState) -> HeaderValue {
    HeaderValue::from_str(state.cluster.node.id.as_str())
        .unwrap_or_else(|_| HeaderValue::from_static("kitara"))
}

/// Answers one request, as it came on a connection or inside a batch another node
/// forwarded (`forward::batch`): its id, its route's handler, its metrics, and the
/// headers every answer carries.
async fn answer(
    state: &Arc<AppState>,
    mut request: Request<RequestBody>,
    request_timeout: Duration,
    node: HeaderValue,
) -> Response<Body> {
    let id = request_id::of(request.headers());
    // A request forwarded to its store's owner carries the id there.
    request
        .headers_mut()
        .insert(request_id::X_REQUEST_ID, id.clone());
    let span = tracing::info_span!("request", request_id = %id.to_str().unwrap_or_default());
    async move {
        let started = state.metrics.enabled.then(std::time::Instant::now);
        let method = request.method().clone();
        // Only for the debug line: no copy of the path when it is off.
        let path =
            tracing::enabled!(tracing::Level::DEBUG).then(|| request.uri().path().to_owned());
        let (route, mut response) = route(state, request, request_timeout).await;
        let status = response.status().as_u16();
        if let Some(started) = started {
            let route = route.unwrap_or(routes::ROUTES.len());
            state.metrics.request(route, status, started.elapsed());
        }
        tracing::debug!(%method, path = path.as_deref(), status, "answered");
        let headers = response.headers_mut();
        headers.insert(request_id::X_REQUEST_ID, id);
        // A forwarded answer names the owner that decided it; any other, this node.
        headers.entry(NODE_HEADER).or_insert(node);
        response
    }
    .instrument(span)
    .await
}

/// Answers a request from the route table; also says which route it was (its index in
/// `routes::ROUTES`, for the metrics).
async fn route(
    state: &Arc<AppState>,
    request: Request<RequestBody>,
    request_timeout: Duration,
) -> (Option<usize>, Response<Body>) {
    let Some((index, id)) = routes::find(request.uri().path()) else {
        return (None, ApiError::NotFound.into_response());
    };
    let route = &routes::ROUTES[index];
    // The path names an order or a product, or something that names none.
    let id = id.and_then(request::parse_id);
    // An admin path checks the token before anything else, the method included.
    let refused = match route.admin {
        true => admin::authorize(state, request.headers()).err(),
        false => None,
    };
    let result = match (refused, route.operation(request.method())) {
        (Some(refusal), _) => Err(refusal),
        (None, None) => Err(ApiError::MethodNotAllowed {
            allow: route.allow(),
        }),
        (None, Some(operation)) => {
            let call = call::Call {
                state,
                request,
                id,
                timeout: request_timeout,
            };
            (operation.handler)(call).await
        }
    };
    let response = result.unwrap_or_else(|error| {
        error.log();
        error.into_response()
    });
    (Some(index), response)
}
