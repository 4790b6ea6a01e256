//! The latency histograms of routed requests.
//!
//! A routed request's clock starts when the routed service takes it
//! ([`RequestClock`]). The upstream client adds the time it waits on
//! providers to the request's [`UpstreamWait`] (a request extension every
//! attempt shares); when the response head is ready, the time spent in
//! Sentinel itself (`sentinel_overhead_seconds`) is the time so far minus
//! that wait. The response body is then [`Timed`]: its first content
//! chunk sets `sentinel_time_to_first_token_seconds` (streams), and its
//! end, or its drop when the client leaves first,
//! `sentinel_request_duration_seconds` and the tier's last minute of
//! traffic ([`Recent`], for the status page).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use ::metrics::Histogram;
use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use sentinel_core::Tier;
use sentinel_layer::RoutingDecision;
use sentinel_layer::metrics::HandleCache;
use tokio::time::Instant;

use crate::metrics as m;
use crate::recent::Recent;
use crate::trace::SharedSpan;

/// The time a routed request spent waiting on providers, summed over its
/// attempts (a request extension, shared by the attempts).
#[derive(Debug, Clone, Default)]
pub(crate) struct UpstreamWait(Arc<AtomicU64>);

impl UpstreamWait {
    /// Adds a wait that started at `since` and ends now.
    fn add_since(&self, since: Instant) {
        let nanos = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(nanos, Ordering::Relaxed);
    }

    /// A wait on a provider that starts now and ends when the guard goes.
    pub(crate) fn waiting(&self) -> Waiting {
        Waiting {
            wait: self.clone(),
            since: Instant::now(),
        }
    }

    fn total(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

/// A wait on a provider, added to its request's [`UpstreamWait`] when
/// dropped.
#[derive(Debug)]
pub(crate) struct Waiting {
    wait: UpstreamWait,
    since: Instant,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.wait.add_since(self.since);
    }
}

/// `tier`, `model`, `provider`: the labels of a model's histograms.
type ModelLabels = (&'static str, Arc<str>, Arc<str>);

/// The histogram handles of routed requests, registered once per label
/// set: a registry lookup with new labels per request costs more than the
/// record itself.
#[derive(Debug, Default)]
pub(crate) struct Timings {
    overhead: HandleCache<&'static str, Histogram>,
    first_token: HandleCache<ModelLabels, Histogram>,
    /// By model labels and status class.
    duration: HandleCache<(ModelLabels, &'static str), Histogram>,
    /// The last minute of each tier's traffic.
    pub(crate) recent: Recent,
}

/// A routed request's clock, from its arrival at the routed service.
#[derive(Debug)]
pub(crate) struct RequestClock {
    arrival: Instant,
    wait: UpstreamWait,
    timings: Arc<Timings>,
    /// The request's server span (tracing on, sampled).
    span: Option<SharedSpan>,
}

impl RequestClock {
    /// Starts the clock of `request`, giving it the wait its attempts add to.
    /// `span` is its server span, when traced.
    pub(crate) fn start<B>(
        request: &mut http::Request<B>,
        timings: &Arc<Timings>,
        span: Option<SharedSpan>,
    ) -> Self {
        let wait = UpstreamWait::default();
        request.extensions_mut().insert(wait.clone());
        RequestClock {
            arrival: Instant::now(),
            wait,
            timings: timings.clone(),
            span,
        }
    }

    /// The response head is ready: records the overhead and times the body.
    pub(crate) fn answered<B>(self, response: Response<B>) -> Response<Timed<B>> {
        let decision = response.extensions().get::<RoutingDecision>();
        let label = |f: fn(&RoutingDecision) -> &Arc<str>| {
            decision.map_or_else(|| Arc::from("none"), |d| f(d).clone())
        };
        let tier: &'static str = decision.map_or("none", |d| d.tier.as_str());
        let model = label(|d| &d.model);
        let provider = label(|d| &d.provider);
        let overhead = self.arrival.elapsed().saturating_sub(self.wait.total());
        let timings = &self.timings;
        timings
            .overhead
            .get(&tier, || ::metrics::histogram!(m::OVERHEAD, "tier" => tier))
            .record(overhead.as_secs_f64());

        let status = sentinel_layer::metrics::status_class(response.status());
        let first_token = (decision.is_some_and(|d| d.stream) && response.status().is_success())
            .then(|| {
                let key = (tier, model.clone(), provider.clone());
                timings.first_token.get(&key, || {
                    ::metrics::histogram!(m::TIME_TO_FIRST_TOKEN,
                        "tier" => tier,
                        "model" => model.clone(),
                        "provider" => provider.clone())
                })
            });
        let key = ((tier, model.clone(), provider.clone()), status);
        let duration = timings.duration.get(&key, || {
            ::metrics::histogram!(m::REQUEST_DURATION,
                "tier" => tier,
                "model" => model,
                "provider" => provider,
                "status" => status)
        });
        if let Some(span) = &self.span {
            span.answered(decision, response.status());
        }
        let end = End {
            duration,
            tier: decision.map(|d| d.tier),
            error: !response.status().is_success(),
            timings: self.timings,
            span: self.span,
        };
        response.map(|inner| Timed {
            inner,
            arrival: self.arrival,
            first_token,
            end: Some(end),
        })
    }
}

/// What a routed request's end records.
#[derive(Debug)]
struct End {
    duration: Histogram,
    /// The tier routed to (none for a request answered before routing).
    tier: Option<Tier>,
    /// Not answered `2xx`.
    error: bool,
    timings: Arc<Timings>,
    span: Option<SharedSpan>,
}

impl End {
    fn record(self, arrival: Instant) {
        if let Some(span) = &self.span {
            span.end();
        }
        let elapsed = arrival.elapsed();
        self.duration.record(elapsed.as_secs_f64());
        if let Some(tier) = self.tier {
            self.timings.recent.record(tier, elapsed, self.error);
        }
    }
}

pin_project_lite::pin_project! {
    /// A routed response body that records when its first content chunk
    /// and its end go to the client.
    pub(crate) struct Timed<B> {
        #[pin]
        inner: B,
        arrival: Instant,
        // Set until the first content chunk (streamed answers only).
        first_token: Option<Histogram>,
        // Set until the end (or the drop) is recorded.
        end: Option<End>,
    }

    impl<B> PinnedDrop for Timed<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // The client left before the end: the request ends here.
            if let Some(end) = this.end.take() {
                end.record(*this.arrival);
            }
        }
    }
}

impl<B> Body for Timed<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if frame.data_ref().is_some_and(|d| !d.is_empty())
                    && let Some(first_token) = this.first_token.take()
                {
                    first_token.record(this.arrival.elapsed().as_secs_f64());
                }
            }
            Poll::Ready(_) => {
                if let Some(end) = this.end.take() {
                    end.record(*this.arrival);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, StreamBody};
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use sentinel_core::Tier;
    use sentinel_layer::SelectionReason;

    use super::*;

    fn decision(stream: bool) -> RoutingDecision {
        RoutingDecision {
            requested_tier: Tier::Simple,
            tier: Tier::Simple,
            provider: "openai".into(),
            model: "m".into(),
            attempt: 1,
            reason: SelectionReason::Weighted,
            session: None,
            stream,
        }
    }

    /// Every histogram's recorded values, by name.
    fn histograms(snapshotter: &metrics_util::debugging::Snapshotter) -> Vec<(String, Vec<f64>)> {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| match value {
                DebugValue::Histogram(values) => Some((
                    key.key().name().to_owned(),
                    values.into_iter().map(|v| v.into_inner()).collect(),
                )),
                _ => None,
            })
            .collect()
    }

    fn values(all: &[(String, Vec<f64>)], name: &str) -> Vec<f64> {
        all.iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.clone())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_records_overhead_first_token_and_duration() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _guard = metrics::set_default_local_recorder(&recorder);

        let mut request = http::Request::new(());
        let timings = Arc::default();
        let clock = RequestClock::start(&mut request, &timings, None);
        let wait = request.extensions().get::<UpstreamWait>().unwrap().clone();
        // 10 ms in Sentinel, then 200 ms waiting on the provider.
        tokio::time::advance(Duration::from_millis(10)).await;
        let waiting = wait.waiting();
        tokio::time::advance(Duration::from_millis(200)).await;
        drop(waiting);

        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let mut response = Response::new(body);
        response.extensions_mut().insert(decision(true));
        let mut timed = clock.answered(response).into_body();

        tx.send(Ok(Frame::data(Bytes::from_static(b"data: a\n\n"))))
            .await
            .unwrap();
        let first = timed.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        tokio::time::advance(Duration::from_millis(500)).await;
        drop(tx);
        assert!(timed.frame().await.is_none());

        let all = histograms(&snapshotter);
        let near = |got: Vec<f64>, want: f64| {
            assert_eq!(got.len(), 1, "one value: {got:?}");
            assert!((got[0] - want).abs() < 1e-6, "{got:?} != {want}");
        };
        near(values(&all, m::OVERHEAD), 0.010);
        near(values(&all, m::TIME_TO_FIRST_TOKEN), 0.210);
        near(values(&all, m::REQUEST_DURATION), 0.710);
        // And the tier's last minute, for the status page.
        let minute = timings.recent.last_minute(Tier::Simple);
        assert_eq!((minute.requests, minute.errors), (1, 0));
        assert!(minute.p50.is_some_and(|p| p >= Duration::from_millis(710)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_dropped_early_ends_the_request_and_an_answer_has_no_first_token() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _guard = metrics::set_default_local_recorder(&recorder);

        let mut request = http::Request::new(());
        let clock = RequestClock::start(&mut request, &Arc::default(), None);
        let mut response = Response::new(http_body_util::Full::new(Bytes::from("{}")));
        response.extensions_mut().insert(decision(false));
        let timed = clock.answered(response).into_body();
        tokio::time::advance(Duration::from_millis(30)).await;
        drop(timed);

        let all = histograms(&snapshotter);
        assert_eq!(values(&all, m::REQUEST_DURATION).len(), 1);
        assert!((values(&all, m::REQUEST_DURATION)[0] - 0.030).abs() < 1e-6);
        assert!(values(&all, m::TIME_TO_FIRST_TOKEN).is_empty());
    }
}
