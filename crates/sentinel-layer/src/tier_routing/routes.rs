//! Which requests the layer acts on, and how.

use std::sync::Arc;

use http::{HeaderMap, Method, Uri};

pub(crate) type RoutePredicate = Arc<dyn Fn(&Method, &Uri) -> bool + Send + Sync>;

/// Which requests the layer acts on, and how.
pub(crate) struct Routes {
    pub(crate) paths: Vec<String>,
    pub(crate) predicate: Option<RoutePredicate>,
    /// gRPC method paths (`/pkg.Service/Method`) and service prefixes
    /// (`/pkg.Service/`) routed as gRPC; empty: gRPC routing is off.
    pub(crate) grpc: Vec<String>,
}

/// The paths whose `POST`s the layer routes unless told otherwise
/// ([`routed_paths`](crate::TierRoutingLayerBuilder::routed_paths)).
pub const DEFAULT_ROUTED_PATHS: [&str; 2] = ["/v1/chat/completions", "/v1/responses"];

impl Default for Routes {
    fn default() -> Self {
        Routes {
            paths: DEFAULT_ROUTED_PATHS.map(String::from).to_vec(),
            predicate: None,
            grpc: Vec::new(),
        }
    }
}

/// What the layer does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Not routed: the inner service gets it untouched.
    PassThrough,
    /// A routed JSON request: body buffered, checked and rewritten.
    Json,
    /// A routed gRPC call (opted into, on a configured gRPC path): tier from
    /// metadata, body streamed through, errors as gRPC statuses.
    Grpc,
}

impl Routes {
    /// The JSON routes come first: a gRPC content type on a JSON route is
    /// a JSON request with the wrong content type (415), never a way
    /// around the body checks.
    pub(crate) fn mode(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Mode {
        let json = match &self.predicate {
            Some(predicate) => predicate(method, uri),
            None => method == Method::POST && self.paths.iter().any(|p| p == uri.path()),
        };
        if json {
            return Mode::Json;
        }
        if method == Method::POST
            && self.grpc.iter().any(|p| grpc_path_matches(p, uri.path()))
            && crate::grpc::is_grpc(headers)
        {
            return Mode::Grpc;
        }
        Mode::PassThrough
    }
}

/// A configured gRPC path matches itself, and a service prefix (ending in
/// `/`) matches every method of the service.
fn grpc_path_matches(configured: &str, path: &str) -> bool {
    if configured.ends_with('/') {
        path.strip_prefix(configured)
            .is_some_and(|method| !method.is_empty() && !method.contains('/'))
    } else {
        configured == path
    }
}
