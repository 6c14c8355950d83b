//! The default HTTP endpoint: serves wire payloads on its own tokio runtime with hyper, so that
//! serving never waits on the JavaScript thread and never keeps the Node process alive.
//!
//! Routes, as pixstore 3.x browsers expect:
//!
//! - `GET <route>/<percent-encoded id>` with `x-pixstore-proof` and optionally
//!   `x-pixstore-token`: `200`, `application/octet-stream`, the wire payload;
//! - `GET <route>` or `<route>/`: `400`, `Missing image id`;
//! - `OPTIONS` anything: `204`; any other path or method: `404`.
//!
//! Every response carries the CORS headers. The listening socket sets `SO_REUSEPORT`, so the
//! processes of one app (Node's cluster module, PM2) each listen on the same port.

use std::convert::Infallible;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS};
use hyper::header::{ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use percent_encoding::percent_decode_str;
use socket2::{Domain, Socket, Type};
use tokio::sync::{oneshot, Semaphore};

use super::error::{Error, ErrorKind, Result};
use super::store::Store;

/// Longest percent-encoded id accepted in a path; longer is `414`.
const MAX_ENCODED_ID: usize = 1024;
/// Payloads being built at once. Each holds one ciphertext in memory.
const PAYLOADS_IN_FLIGHT: usize = 32;
/// How long a client may take to send its headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stop waits for responses in flight before it drops the connections left: a
/// client that stops reading must not hold the shutdown forever.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running endpoint. Dropping it stops it.
pub struct Endpoint {
  address: SocketAddr,
  stop: Option<oneshot::Sender<()>>,
  runtime: Option<tokio::runtime::Runtime>,
  finished: std::sync::mpsc::Receiver<()>,
}

impl Endpoint {
  /// Binds the configured host and port and starts serving. A port already taken is an error
  /// naming host and port.
  pub fn start(
    store: Weak<Store>,
    host: &str,
    port: u16,
    route: &str,
    origin: &str,
  ) -> Result<Self> {
    let address = resolve(host, port)?;
    let listener = bind(address).map_err(|e| {
      Error::new(
        ErrorKind::EndpointUnavailable,
        format!(
          "The default endpoint cannot listen on {host}:{port}: {e}. Choose another \
           defaultEndpointListenPort, or set defaultEndpointEnabled: false and serve with \
           customEndpointHelper"
        ),
      )
    })?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
      .worker_threads(2)
      .thread_name("pixstore-endpoint")
      .enable_all()
      .build()
      .map_err(|e| {
        Error::new(
          ErrorKind::EndpointUnavailable,
          format!("No endpoint runtime: {e}"),
        )
      })?;
    let listener = {
      let _entered = runtime.enter();
      tokio::net::TcpListener::from_std(listener).map_err(|e| {
        Error::new(
          ErrorKind::EndpointUnavailable,
          format!("Cannot listen on {host}:{port}: {e}"),
        )
      })?
    };

    let routes = Arc::new(Routes {
      store,
      route: route.trim_end_matches('/').to_owned(),
      cors_origin: HeaderValue::from_str(origin).map_err(|_| {
        Error::new(
          ErrorKind::InvalidConfig,
          "accessControlAllowOrigin is not a header value",
        )
      })?,
      payloads: Semaphore::new(PAYLOADS_IN_FLIGHT),
    });
    let (stop, stopped) = oneshot::channel();
    let (done, finished) = std::sync::mpsc::channel();
    runtime.spawn(async move {
      serve(listener, routes, stopped).await;
      let _ = done.send(());
    });

    Ok(Endpoint {
      address,
      stop: Some(stop),
      runtime: Some(runtime),
      finished,
    })
  }

  pub fn address(&self) -> SocketAddr {
    self.address
  }

  /// Stops accepting, lets the responses in flight finish, then stops the runtime. Blocks, but
  /// may be called from any thread, an async one included.
  pub fn stop(&mut self) {
    if let Some(stop) = self.stop.take() {
      let _ = stop.send(());
      let _ = self.finished.recv();
    }
    if let Some(runtime) = self.runtime.take() {
      runtime.shutdown_background();
    }
  }
}

impl Drop for Endpoint {
  fn drop(&mut self) {
    self.stop();
  }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
  let host = if host == "localhost" {
    "127.0.0.1"
  } else {
    host
  };
  (host, port)
    .to_socket_addrs()
    .ok()
    .and_then(|mut addresses| addresses.next())
    .ok_or_else(|| {
      Error::new(
        ErrorKind::EndpointUnavailable,
        format!("The default endpoint cannot listen on {host}:{port}: the host does not resolve"),
      )
    })
}

fn bind(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
  let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
  socket.set_reuse_address(true)?;
  socket.set_reuse_port(true)?;
  socket.set_nonblocking(true)?;
  socket.bind(&address.into())?;
  socket.listen(1024)?;
  Ok(socket.into())
}

async fn serve(
  listener: tokio::net::TcpListener,
  routes: Arc<Routes>,
  mut stopped: oneshot::Receiver<()>,
) {
  let graceful = GracefulShutdown::new();
  let mut http = hyper::server::conn::http1::Builder::new();
  http
    .timer(TokioTimer::new())
    .header_read_timeout(HEADER_TIMEOUT)
    .max_buf_size(16 * 1024);

  loop {
    tokio::select! {
      accepted = listener.accept() => {
        let Ok((stream, _)) = accepted else { continue };
        let routes = Arc::clone(&routes);
        let service = hyper::service::service_fn(move |request| {
          let routes = Arc::clone(&routes);
          async move { Ok::<_, Infallible>(routes.answer(request).await) }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
          let _ = connection.await;
        });
      }
      _ = &mut stopped => break,
    }
  }
  drop(listener);
  let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
}

/// Decodes a percent-encoded id as `decodeURIComponent` would: `None` for a `%` without two hex
/// digits after it, or for bytes that are not UTF-8.
fn decode_id(encoded: &str) -> Option<String> {
  let bytes = encoded.as_bytes();
  let escapes_complete = bytes.iter().enumerate().all(|(i, &b)| {
    b != b'%' || (bytes.len() > i + 2 && bytes[i + 1..i + 3].iter().all(u8::is_ascii_hexdigit))
  });
  if !escapes_complete {
    return None;
  }
  percent_decode_str(encoded)
    .decode_utf8()
    .ok()
    .map(|id| id.into_owned())
}

struct Routes {
  store: Weak<Store>,
  route: String,
  cors_origin: HeaderValue,
  payloads: Semaphore,
}

impl Routes {
  async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let is_ours = path == self.route || path.starts_with(&format!("{}/", self.route));

    match *request.method() {
      Method::OPTIONS => self.respond(StatusCode::NO_CONTENT, Body::Empty),
      Method::GET if is_ours => match path[self.route.len()..].trim_start_matches('/') {
        "" => self.respond(StatusCode::BAD_REQUEST, Body::Text("Missing image id")),
        encoded if encoded.len() > MAX_ENCODED_ID => {
          self.respond(StatusCode::URI_TOO_LONG, Body::Text("Image id too long"))
        }
        encoded => match decode_id(encoded) {
          None => self.respond(StatusCode::BAD_REQUEST, Body::Text("Malformed image id")),
          Some(id) => {
            let payload = self.payload(id, &request).await;
            self.respond(StatusCode::OK, Body::Payload(payload))
          }
        },
      },
      _ => self.respond(StatusCode::NOT_FOUND, Body::Text("Not found")),
    }
  }

  async fn payload(&self, id: String, request: &Request<Incoming>) -> Vec<u8> {
    let header = |name: &str| {
      request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    };
    let proof = header("x-pixstore-proof");
    let token = header("x-pixstore-token").and_then(|t| t.trim().parse::<i64>().ok());

    let Some(store) = self.store.upgrade() else {
      return super::wire::bare(super::wire::WireState::InternalError);
    };
    let _permit = self.payloads.acquire().await;
    tokio::task::spawn_blocking(move || store.payload(&id, token, proof.as_deref()))
      .await
      .unwrap_or_else(|_| super::wire::bare(super::wire::WireState::InternalError))
  }

  fn respond(&self, status: StatusCode, body: Body) -> Response<Full<Bytes>> {
    // A payload depends on the proof and token headers, not only on the URL: no cache may keep
    // one and hand it to another client.
    let no_store = matches!(body, Body::Payload(_));
    let (content_type, bytes) = match body {
      Body::Payload(payload) => (Some("application/octet-stream"), Bytes::from(payload)),
      Body::Text(text) => (
        Some("text/plain; charset=utf-8"),
        Bytes::from_static(text.as_bytes()),
      ),
      Body::Empty => (None, Bytes::new()),
    };
    let mut response = Response::new(Full::new(bytes));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Some(content_type) = content_type {
      headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    if no_store {
      headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, self.cors_origin.clone());
    headers.insert(
      ACCESS_CONTROL_ALLOW_METHODS,
      HeaderValue::from_static("GET,OPTIONS"),
    );
    headers.insert(
      ACCESS_CONTROL_ALLOW_HEADERS,
      HeaderValue::from_static("Content-Type, Authorization, x-pixstore-proof, x-pixstore-token"),
    );
    response
  }
}

enum Body {
  Payload(Vec<u8>),
  Text(&'static str),
  Empty,
}

#[cfg(test)]
mod tests {
  use super::decode_id;

  #[test]
  fn decodes_ids_like_decode_uri_component() {
    assert_eq!(decode_id("trips%3Aabc").as_deref(), Some("trips:abc"));
    assert_eq!(decode_id("%2e%2E%2Fetc").as_deref(), Some("../etc"));
    for malformed in ["%ZZ", "%", "abc%", "%4", "%E0%A4%A", "%C3%28", "%zz1"] {
      assert_eq!(decode_id(malformed), None, "{malformed}");
    }
  }
}
