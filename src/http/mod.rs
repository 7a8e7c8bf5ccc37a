//! The hyper front end: accepting connections, routing, and the edge checks (layer 1).
//!
//! The service never returns `Err` (hyper would drop the connection): every failure
//! becomes an `ApiError` answer.

mod admin;
mod openapi;
mod orders;
mod request;
mod request_id;
pub mod response;
mod views;

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::HeaderMap;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::app::AppState;
use crate::domain::{OrderId, Resolution};
use crate::metrics::{self, LockResult};
use response::{ApiError, Body};
use views::ProductView;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

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
        let service = service_fn(move |request: Request<Incoming>| {
            let state = state.clone();
            let id = request_id::of(request.headers());
            let span =
                tracing::info_span!("request", request_id = %id.to_str().unwrap_or_default());
            async move {
                let started = state.metrics.enabled.then(std::time::Instant::now);
                let method = request.method().clone();
                // Only for the debug line: no copy of the path when it is off.
                let path = tracing::enabled!(tracing::Level::DEBUG)
                    .then(|| request.uri().path().to_owned());
                let (route, mut response) = route(&state, request, request_timeout).await;
                let status = response.status().as_u16();
                if let Some(started) = started {
                    let route = route.map_or(metrics::ROUTES.len() - 1, Route::metric);
                    state.metrics.request(route, status, started.elapsed());
                }
                tracing::debug!(%method, path = path.as_deref(), status, "answered");
                response.headers_mut().insert(request_id::X_REQUEST_ID, id);
                Ok::<_, Infallible>(response)
            }
            .instrument(span)
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
    if tokio::time::timeout(config.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after the shutdown timeout");
    }
}

/// What a path names; each route serves one set of methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    Products,
    Lock,
    Order,
    Confirm,
    Cancel,
    AdminPage,
    Admin(admin::Endpoint),
}

impl Route {
    fn allow(self) -> &'static str {
        match self {
            Route::Healthz
            | Route::Readyz
            | Route::Metrics
            | Route::OpenApi
            | Route::Products
            | Route::Order
            | Route::AdminPage => "GET, HEAD",
            Route::Lock | Route::Confirm | Route::Cancel => "POST",
            Route::Admin(endpoint) => endpoint.allow(),
        }
    }
}

impl Route {
    /// Its index in `metrics::ROUTES`.
    fn metric(self) -> usize {
        use admin::Endpoint;
        match self {
            Route::Healthz => 0,
            Route::Readyz => 1,
            Route::Metrics => 2,
            Route::Products => 3,
            Route::Lock => 4,
            Route::Order => 5,
            Route::Confirm => 6,
            Route::Cancel => 7,
            Route::AdminPage => 8,
            Route::Admin(Endpoint::Users) => 9,
            Route::Admin(Endpoint::Stores) => 10,
            Route::Admin(Endpoint::Products) => 11,
            Route::Admin(Endpoint::Product) => 12,
            Route::Admin(Endpoint::Stock) => 13,
            Route::Admin(Endpoint::Movements) => 14,
            Route::Admin(Endpoint::Orders) => 15,
            Route::OpenApi => 16,
        }
    }
}

/// The paths Kitara serves. A fixed segment wins over a parameter, so
/// `/api/v1/order/lock` is the lock endpoint, never the order `lock`.
fn router() -> &'static matchit::Router<Route> {
    static ROUTER: OnceLock<matchit::Router<Route>> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let mut router = matchit::Router::new();
        for (path, route) in [
            ("/healthz", Route::Healthz),
            ("/readyz", Route::Readyz),
            ("/metrics", Route::Metrics),
            ("/api/v1/openapi.json", Route::OpenApi),
            ("/api/v1/products", Route::Products),
            ("/api/v1/order/lock", Route::Lock),
            ("/api/v1/order/{id}", Route::Order),
            ("/api/v1/order/{id}/confirm", Route::Confirm),
            ("/api/v1/order/{id}/cancel", Route::Cancel),
            ("/admin", Route::AdminPage),
            ("/api/v1/admin/users", Route::Admin(admin::Endpoint::Users)),
            (
                "/api/v1/admin/stores",
                Route::Admin(admin::Endpoint::Stores),
            ),
            (
                "/api/v1/admin/products",
                Route::Admin(admin::Endpoint::Products),
            ),
            (
                "/api/v1/admin/products/{id}",
                Route::Admin(admin::Endpoint::Product),
            ),
            (
                "/api/v1/admin/products/{id}/stock",
                Route::Admin(admin::Endpoint::Stock),
            ),
            (
                "/api/v1/admin/products/{id}/movements",
                Route::Admin(admin::Endpoint::Movements),
            ),
            (
                "/api/v1/admin/orders",
                Route::Admin(admin::Endpoint::Orders),
            ),
        ] {
            if let Err(e) = router.insert(path, route) {
                unreachable!("Kitara's routes do not conflict: {e}");
            }
        }
        router
    })
}

/// Answers a request; also says which route it was (for the metrics).
async fn route(
    state: &Arc<AppState>,
    request: Request<Incoming>,
    request_timeout: Duration,
) -> (Option<Route>, Response<Body>) {
    let (route, id) = match router().at(request.uri().path()) {
        Ok(matched) => (
            *matched.value,
            matched.params.get("id").map(request::parse_id),
        ),
        Err(_) => return (None, ApiError::NotFound.into_response()),
    };
    // The path names an order or a product, or something that names none.
    let id = id.flatten();
    let order = id.map(OrderId);
    // HEAD is answered like GET; hyper leaves the body out.
    let read = matches!(*request.method(), Method::GET | Method::HEAD);
    let post = request.method() == Method::POST;
    let result = match route {
        Route::Healthz if read => Ok(response::json(StatusCode::OK, "OK", Some("healthy"))),
        Route::Readyz if read => match state.readiness.ready() {
            true => Ok(response::json(StatusCode::OK, "OK", Some("ready"))),
            false => Err(ApiError::NotReady),
        },
        Route::Products if read => Ok(list_products(state)),
        Route::Order if read => orders::get(state, order).await,
        Route::Lock if post => {
            let result = orders::lock(state, request, request_timeout).await;
            state.metrics.lock_outcome(lock_outcome(&result));
            result
        }
        Route::Metrics if read => metrics_answer(state),
        Route::OpenApi if read => Ok(openapi_answer()),
        Route::Confirm if post => {
            orders::end(state, request, order, Resolution::Confirm, request_timeout).await
        }
        Route::Cancel if post => {
            orders::end(state, request, order, Resolution::Cancel, request_timeout).await
        }
        Route::AdminPage if read => Ok(admin::page(state)),
        Route::Admin(endpoint) => match admin::authorize(state, request.headers()) {
            Ok(()) => admin::serve(state, endpoint, id, request, request_timeout).await,
            Err(refusal) => Err(refusal),
        },
        route => Err(ApiError::MethodNotAllowed {
            allow: route.allow(),
        }),
    };
    let response = result.unwrap_or_else(|error| {
        error.log();
        error.into_response()
    });
    (Some(route), response)
}

/// What a lock request ended as.
fn lock_outcome(result: &Result<Response<Body>, ApiError>) -> LockResult {
    use crate::store::LockError;
    match result {
        Ok(response) if response.headers().contains_key("idempotent-replayed") => {
            LockResult::Replayed
        }
        Ok(_) => LockResult::Placed,
        Err(ApiError::Lock(e)) => match e {
            LockError::UserNotFound => LockResult::UserNotFound,
            LockError::MixedStores => LockResult::MixedStores,
            LockError::LimitExceeded => LockResult::LimitExceeded,
            LockError::NoneAvailable => LockResult::NoneAvailable,
            LockError::SomeAvailable => LockResult::SomeAvailable,
            LockError::Busy => LockResult::Busy,
            LockError::Unavailable | LockError::KeyTaken => LockResult::Unavailable,
            LockError::Conflict => LockResult::Conflict,
            LockError::OutcomeUnknown => LockResult::OutcomeUnknown,
            LockError::ShuttingDown => LockResult::ShuttingDown,
        },
        Err(ApiError::KeyInProgress) => LockResult::KeyInProgress,
        Err(ApiError::KeyReused) => LockResult::KeyReused,
        Err(_) => LockResult::Invalid,
    }
}

/// `GET /api/v1/openapi.json`: the document itself, not in an envelope.
fn openapi_answer() -> Response<Body> {
    response::raw(
        StatusCode::OK,
        "application/json",
        Bytes::from_static(openapi::document().as_bytes()),
    )
}

/// `GET /metrics`: the Prometheus text format, with the depths read now.
fn metrics_answer(state: &AppState) -> Result<Response<Body>, ApiError> {
    if !state.metrics.enabled {
        return Err(ApiError::NotFound);
    }
    let deepest = state
        .stores
        .iter()
        .map(|s| s.value().depth())
        .max()
        .unwrap_or(0);
    state.metrics.mailbox_depth.set(deepest as i64);
    state
        .metrics
        .writer_queue
        .set(state.admin.writer_depth() as i64);
    let text = state.metrics.render().map_err(|e| {
        tracing::error!(error = %e, "cannot render the metrics");
        ApiError::Internal
    })?;
    Ok(response::raw(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        Bytes::from(text),
    ))
}

fn list_products(state: &AppState) -> Response<Body> {
    let catalog = state.catalog.snapshot();
    let products: Vec<ProductView<'_>> = catalog
        .products()
        .iter()
        .map(|p| ProductView::from(&**p))
        .collect();
    response::json(StatusCode::OK, "OK", Some(products))
}

/// Rule 1: a JSON content type, then a body of at most `MAX_BODY_BYTES`, received in
/// time. A declared length over the limit is refused before the body is read.
async fn read_json_body(
    headers: &HeaderMap,
    mut body: Incoming,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    // Exactly one Content-Type: with several, which one the client meant is a guess.
    let mut content_types = headers.get_all(CONTENT_TYPE).iter();
    let json = match (content_types.next(), content_types.next()) {
        (Some(value), None) => value
            .to_str()
            .ok()
            .and_then(|v| v.split(';').next())
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json")),
        _ => false,
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = declared.is_some_and(|len| len > MAX_BODY_BYTES as u64);
    let refusal = if !json {
        Some(ApiError::UnsupportedMediaType)
    } else if too_large {
        Some(ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        })
    } else {
        None
    };
    if let Some(refusal) = refusal {
        // Read a modest body to its end before refusing it: closing a connection with
        // unread data resets it, and the client might lose the answer.
        if declared.is_some_and(|len| len <= DRAIN_LIMIT as u64) {
            let _ = tokio::time::timeout(timeout, read_limited(&mut body, 0)).await;
        }
        return Err(refusal);
    }
    match tokio::time::timeout(timeout, read_limited(&mut body, MAX_BODY_BYTES)).await {
        Err(_) => Err(ApiError::Timeout),
        Ok(result) => result,
    }
}

/// Most bytes read (and thrown away) from a body that is refused anyway.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// Reads the body; past `limit` bytes it keeps reading up to `DRAIN_LIMIT` (see above)
/// and then answers 413.
async fn read_limited(body: &mut Incoming, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::PayloadTooLarge {
        limit: MAX_BODY_BYTES,
    };
    let mut collected = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            tracing::debug!(error = %e, "cannot read a request body");
            ApiError::BadRequest("request body could not be read".into())
        })?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= limit {
                collected.extend_from_slice(&data);
            } else if seen > DRAIN_LIMIT {
                return Err(too_large());
            }
        }
    }
    if seen > limit {
        return Err(too_large());
    }
    Ok(Bytes::from(collected))
}
