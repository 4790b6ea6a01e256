//! Body types of the layer.
//!
//! The inner service receives [`RoutedBody`]: the buffered, rewritten bytes
//! of a routed request, or the untouched body of anything else (gRPC, routes
//! the layer does not act on). Responses come back as [`ResponseBody`]: the
//! inner service's body, or one of Sentinel's own JSON errors.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;

/// A request extension the layer sets when it changed a stream's body to
/// ask for the usage chunk (see
/// [`TierRoutingLayerBuilder::stream_usage`](crate::TierRoutingLayerBuilder::stream_usage)):
/// the usage chunk is then not the client's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamUsageAdded;

/// A response body: the inner service's (`Left`) or Sentinel's own (`Right`).
pub type ResponseBody<B> = Either<B, Full<Bytes>>;

pin_project! {
    /// The request body the inner service receives: a routed request's
    /// buffered body, rewritten for the chosen model, or a body the layer
    /// passes through untouched.
    #[derive(Debug)]
    pub struct RoutedBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Buffered { data: Option<Bytes> },
        Streaming { #[pin] body: B },
    }
}

impl<B> RoutedBody<B> {
    /// A buffered body of `data`.
    pub fn buffered(data: Bytes) -> Self {
        RoutedBody {
            kind: Kind::Buffered { data: Some(data) },
        }
    }

    /// An untouched body.
    pub fn streaming(body: B) -> Self {
        RoutedBody {
            kind: Kind::Streaming { body },
        }
    }

    /// The bytes of a buffered body that has not been read yet.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match &self.kind {
            Kind::Buffered { data } => data.as_ref(),
            Kind::Streaming { .. } => None,
        }
    }
}

impl<B> Body for RoutedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Buffered { data } => Poll::Ready(
                data.take()
                    .filter(|d| !d.is_empty())
                    .map(|d| Ok(Frame::data(d))),
            ),
            KindProj::Streaming { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Buffered { data } => data.as_ref().is_none_or(Bytes::is_empty),
            Kind::Streaming { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Buffered { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Streaming { body } => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};

    #[tokio::test]
    async fn buffered_yields_its_bytes_once_with_an_exact_size() {
        let body: RoutedBody<Empty<Bytes>> = RoutedBody::buffered(Bytes::from_static(b"{}"));
        assert_eq!(body.size_hint().exact(), Some(2));
        assert!(!body.is_end_stream());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "{}");
    }

    #[tokio::test]
    async fn streaming_passes_the_inner_body_through() {
        let body: RoutedBody<Full<Bytes>> = RoutedBody::streaming(Full::new(Bytes::from("abc")));
        assert!(body.as_bytes().is_none());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abc");
    }
}
