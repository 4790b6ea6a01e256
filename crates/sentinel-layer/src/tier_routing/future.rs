//! The response future of [`TierRouting`](super::TierRouting).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use http_body_util::Either;
use pin_project_lite::pin_project;
use tower::util::Oneshot;
use tower_service::Service;

use crate::body::{ResponseBody, RoutedBody};

/// The routing work of one routed request, from its head to its answer.
pub(crate) type RoutedFuture<ResBody> =
    Pin<Box<dyn Future<Output = Response<ResponseBody<ResBody>>> + Send>>;

pin_project! {
    /// The future [`TierRouting`](super::TierRouting) returns. A request the
    /// layer passes through is the inner service's own call, unboxed. A
    /// routed request is one boxed future that does all of its work: it
    /// reads the body, decides, and runs the attempts with their breakers
    /// and the retry, without a service stage or a copy of the request
    /// per stage.
    pub struct ResponseFuture<S, B, ResBody>
    where
        S: Service<Request<RoutedBody<B>>, Response = Response<ResBody>>,
    {
        #[pin]
        kind: Kind<S, B, ResBody>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, B, ResBody>
    where
        S: Service<Request<RoutedBody<B>>, Response = Response<ResBody>>,
    {
        PassThrough { #[pin] call: Oneshot<S, Request<RoutedBody<B>>> },
        Routed { future: RoutedFuture<ResBody> },
    }
}

impl<S, B, ResBody> ResponseFuture<S, B, ResBody>
where
    S: Service<Request<RoutedBody<B>>, Response = Response<ResBody>>,
{
    pub(crate) fn pass_through(call: Oneshot<S, Request<RoutedBody<B>>>) -> Self {
        ResponseFuture {
            kind: Kind::PassThrough { call },
        }
    }

    pub(crate) fn routed(future: RoutedFuture<ResBody>) -> Self {
        ResponseFuture {
            kind: Kind::Routed { future },
        }
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B, ResBody>
where
    S: Service<Request<RoutedBody<B>>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::PassThrough { call } => {
                Poll::Ready(ready!(call.poll(cx)).map(|r| r.map(Either::Left)))
            }
            KindProj::Routed { future } => Poll::Ready(Ok(ready!(future.as_mut().poll(cx)))),
        }
    }
}

impl<S, B, ResBody> fmt::Debug for ResponseFuture<S, B, ResBody>
where
    S: Service<Request<RoutedBody<B>>, Response = Response<ResBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::PassThrough { .. } => "pass-through",
            Kind::Routed { .. } => "routed",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}
