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
//! processes of one app (Node's cluster module, PM2) each listen on the same port. Before it
//! binds, an endpoint asks whoever already listens there for its store identity
//! (`GET /.pixstore/identity`), and shares the port only with endpoints of the same store.

use std::convert::Infallible;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Weak};
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Frame, SizeHint};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS};
use hyper::header::{ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use percent_encoding::percent_decode_str;
use socket2::{Domain, Socket, Type};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::error::{Error, ErrorKind, Result};
use super::store::Store;
use super::wire::{self, WireState};

/// Longest percent-encoded id accepted in a path; longer is `414`.
const MAX_ENCODED_ID: usize = 1024;
/// Payloads being built at once. Each holds one ciphertext in memory.
const PAYLOADS_IN_FLIGHT: usize = 32;
/// Payload bytes held for responses not yet sent, over all connections, in units of
/// [`CHUNK`]: 256 MiB. A client that stops reading holds its share until its connection ends,
/// and requests beyond the budget wait, so memory stays bounded whatever clients do.
const PAYLOAD_BUDGET: usize = 4096;
/// Payloads up to this size are built on the connection's own thread, larger ones on a blocking
/// thread. Reading a file of this size from the page cache costs less than the hand-over to a
/// blocking thread and back (98 KB WebP: 9,400 req/s through blocking threads, 13,900 inline);
/// the first request for a file also checks its tag, about 4 ms at this size, once.
const INLINE_PAYLOAD: usize = 2 * 1024 * 1024;
/// A response body is handed to the connection a chunk at a time, so it is only held, not
/// copied into the connection's buffers, while the client is slow.
const CHUNK: usize = 64 * 1024;
/// How long one connection may live, so that a stalled client gives its budget back.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// Where an endpoint tells which store it serves.
const IDENTITY_PATH: &str = "/.pixstore/identity";
const IDENTITY_HEADER: &str = "x-pixstore-store";
/// How long the check of a port already in use waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

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
    identity: String,
    host: &str,
    port: u16,
    route: &str,
    origin: &str,
  ) -> Result<Self> {
    let address = resolve(host, port)?;
    if let Some(holder) = other_listener(address, &identity) {
      return Err(Error::new(
        ErrorKind::EndpointUnavailable,
        format!(
          "The default endpoint cannot listen on {host}:{port}: the port is in use by {holder}. \
           Choose another defaultEndpointListenPort, or set defaultEndpointEnabled: false and \
           serve with customEndpointHelper"
        ),
      ));
    }
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
      identity: HeaderValue::from_str(&identity).expect("base64url is a header value"),
      route: route.trim_end_matches('/').to_owned(),
      cors_origin: HeaderValue::from_str(origin).map_err(|_| {
        Error::new(
          ErrorKind::InvalidConfig,
          "accessControlAllowOrigin is not a header value",
        )
      })?,
      payloads: Semaphore::new(PAYLOADS_IN_FLIGHT),
      budget: Arc::new(Semaphore::new(PAYLOAD_BUDGET)),
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

/// Who else listens on `address`, when it is not an endpoint of the store named `identity`:
/// `None` when nobody listens, or when the port can be shared. Something that accepts but does
/// not answer like an endpoint of this store counts as another app.
fn other_listener(address: SocketAddr, identity: &str) -> Option<&'static str> {
  use std::io::{Read, Write};

  let mut target = address;
  if target.ip().is_unspecified() {
    target.set_ip(match address {
      SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
      SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    });
  }
  let mut stream = std::net::TcpStream::connect_timeout(&target, PROBE_TIMEOUT).ok()?;
  let _ = stream.set_read_timeout(Some(PROBE_TIMEOUT));
  let _ = stream.set_write_timeout(Some(PROBE_TIMEOUT));
  let request =
    format!("GET {IDENTITY_PATH} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
  if stream.write_all(request.as_bytes()).is_err() {
    return Some("another program");
  }
  let mut answer = Vec::new();
  let _ = stream.take(16 * 1024).read_to_end(&mut answer);
  let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
  let ours = format!("{IDENTITY_HEADER}: {}", identity.to_ascii_lowercase());
  if answer.lines().any(|line| line.trim_end() == ours) {
    None
  } else if answer.contains(IDENTITY_HEADER) {
    Some("the endpoint of another Pixstore store")
  } else {
    Some("another program")
  }
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
        let Ok((stream, _)) = accepted else {
          // Out of file descriptors, most likely: wait for connections to end rather than spin.
          tokio::time::sleep(Duration::from_millis(100)).await;
          continue;
        };
        // A response goes out in several writes; with Nagle's algorithm the last one would wait
        // for the client's delayed ACK of the one before (40 ms on Linux).
        let _ = stream.set_nodelay(true);
        let routes = Arc::clone(&routes);
        let service = hyper::service::service_fn(move |request| {
          let routes = Arc::clone(&routes);
          async move { Ok::<_, Infallible>(routes.answer(request).await) }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
          let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
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
pub fn decode_id(encoded: &str) -> Option<String> {
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
  identity: HeaderValue,
  route: String,
  cors_origin: HeaderValue,
  payloads: Semaphore,
  budget: Arc<Semaphore>,
}

impl Routes {
  async fn answer(&self, request: Request<Incoming>) -> Response<Chunked> {
    let path = request.uri().path();
    let is_ours = path == self.route || path.starts_with(&format!("{}/", self.route));

    match *request.method() {
      Method::OPTIONS => self.respond(StatusCode::NO_CONTENT, Body::Empty),
      Method::GET if path == IDENTITY_PATH => {
        let mut response = self.respond(StatusCode::NO_CONTENT, Body::Empty);
        response
          .headers_mut()
          .insert(IDENTITY_HEADER, self.identity.clone());
        response
      }
      Method::GET if is_ours => match path[self.route.len()..].trim_start_matches('/') {
        "" => self.respond(StatusCode::BAD_REQUEST, Body::Text("Missing image id")),
        encoded if encoded.len() > MAX_ENCODED_ID => {
          self.respond(StatusCode::URI_TOO_LONG, Body::Text("Image id too long"))
        }
        encoded => match decode_id(encoded) {
          None => self.respond(StatusCode::BAD_REQUEST, Body::Text("Malformed image id")),
          Some(id) => {
            let (payload, permit) = self.payload(id, &request).await;
            self.respond(StatusCode::OK, Body::Payload(payload, permit))
          }
        },
      },
      _ => self.respond(StatusCode::NOT_FOUND, Body::Text("Not found")),
    }
  }

  /// Builds the payload on a blocking thread. Before it reads an image's file, it waits for
  /// the file's share of the payload budget, which the response holds until it is sent.
  async fn payload(
    &self,
    id: String,
    request: &Request<Incoming>,
  ) -> (Vec<u8>, Option<OwnedSemaphorePermit>) {
    let header = |name: &str| {
      request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    };
    let proof = header("x-pixstore-proof");
    let token = header("x-pixstore-token").and_then(|t| t.trim().parse::<i64>().ok());
    let internal_error = || (wire::bare(WireState::InternalError), None);

    let Some(store) = self.store.upgrade() else {
      return internal_error();
    };
    let _building = self.payloads.acquire().await;
    let units = |len: usize| len.div_ceil(CHUNK).clamp(1, PAYLOAD_BUDGET) as u32;

    // A small payload is built right here: a record lookup and a read of a few kilobytes cost
    // less than the trip to a blocking thread. A larger file, or one that must wait for the
    // budget, is read on a blocking thread.
    let inline = store.payload_within(&id, token, proof.as_deref(), |len| {
      (len <= INLINE_PAYLOAD)
        .then(|| {
          Arc::clone(&self.budget)
            .try_acquire_many_owned(units(len))
            .ok()
        })
        .flatten()
    });
    if let Some((payload, permit)) = inline {
      return (payload, permit);
    }

    let budget = Arc::clone(&self.budget);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
      let built = store.payload_within(&id, token, proof.as_deref(), |len| {
        Some(runtime.block_on(budget.acquire_many_owned(units(len))).ok())
      });
      built.map_or_else(internal_error, |(payload, permit)| {
        (payload, permit.flatten())
      })
    })
    .await
    .unwrap_or_else(|_| internal_error())
  }

  fn respond(&self, status: StatusCode, body: Body) -> Response<Chunked> {
    // A payload depends on the proof and token headers, not only on the URL: no cache may keep
    // one and hand it to another client.
    let no_store = matches!(body, Body::Payload(..));
    let (content_type, bytes, permit) = match body {
      Body::Payload(payload, permit) => (
        Some("application/octet-stream"),
        Bytes::from(payload),
        permit,
      ),
      Body::Text(text) => (
        Some("text/plain; charset=utf-8"),
        Bytes::from_static(text.as_bytes()),
        None,
      ),
      Body::Empty => (None, Bytes::new(), None),
    };
    let mut response = Response::new(Chunked {
      rest: bytes,
      _permit: permit,
    });
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
  Payload(Vec<u8>, Option<OwnedSemaphorePermit>),
  Text(&'static str),
  Empty,
}

/// A response body handed over [`CHUNK`] bytes at a time, holding its share of the payload
/// budget until the last chunk is taken.
struct Chunked {
  rest: Bytes,
  _permit: Option<OwnedSemaphorePermit>,
}

impl http_body::Body for Chunked {
  type Data = Bytes;
  type Error = Infallible;

  fn poll_frame(
    mut self: Pin<&mut Self>,
    _: &mut Context<'_>,
  ) -> Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
    if self.rest.is_empty() {
      return Poll::Ready(None);
    }
    let len = self.rest.len().min(CHUNK);
    Poll::Ready(Some(Ok(Frame::data(self.rest.split_to(len)))))
  }

  fn is_end_stream(&self) -> bool {
    self.rest.is_empty()
  }

  fn size_hint(&self) -> SizeHint {
    SizeHint::with_exact(self.rest.len() as u64)
  }
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
