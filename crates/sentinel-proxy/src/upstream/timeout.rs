//! The idle timeout of an upstream response body.
//!
//! [`TimeoutBody`] is shaped like tower-http's `timeout::TimeoutBody`: a
//! pin-projected body holding an `Option<Sleep>`, armed by a poll that has
//! to wait, failing with [`TimeoutError`] when it fires. It is not
//! tower-http's own because that one differs in three ways that matter here:
//!
//! - **The idle period runs from the last frame**, not from the poll that
//!   waits. A frame moves a deadline (now plus the timeout), and a sleep
//!   armed later is armed at that deadline. tower-http's timer starts at each
//!   poll, so a consumer slow to poll again would stretch the period.
//! - **The sleep is moved only when it fires, never on a frame.** A frame
//!   costs one `Instant::now()`. When the sleep fires before the deadline
//!   (frames came meanwhile) it is moved to the deadline and polled again.
//!   tower-http drops the sleep on every frame and makes a new one on the
//!   next poll: a timer-wheel insert and removal per frame (BENCHMARKS.md,
//!   "Fixes", item 5).
//! - **A ready frame wins over the timer.** The inner body is polled first
//!   and the sleep only when the body has nothing, so a flowing stream never
//!   touches the timer. tower-http polls the sleep first.
//!
//! The sleep is armed only once a poll waits, and dropped when the body ends
//! (so a body that has ended, or that nobody reads, holds no timer entry). It
//! lives inside the body, which the response boxes once anyway: the timer
//! needs no allocation of its own.
//!
//! What a stall means for the client (an SSE `upstream_timeout` error event,
//! the attempt reported as failed, a chat stream continued on the next model)
//! is decided by the body around this one (`body.rs`), which tells a stall
//! from a broken body by the [`TimeoutError`] it gets.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use sentinel_layer::BoxError;
use tokio::time::{Instant, Sleep, sleep_until};

pin_project_lite::pin_project! {
    /// A body that fails with [`TimeoutError`] when its inner body sends no
    /// frame for the idle timeout (see the [module docs](self)).
    pub(super) struct TimeoutBody<B> {
        #[pin]
        body: B,
        // Armed when a poll has to wait, moved only when it fires before
        // `deadline`, dropped when the body ends.
        #[pin]
        sleep: Option<Sleep>,
        timeout: Duration,
        // The last frame (or the start) plus `timeout`.
        deadline: Instant,
    }
}

impl<B> TimeoutBody<B> {
    /// `body`, failing when it sends no frame for `timeout`. The clock
    /// starts now.
    pub(super) fn new(body: B, timeout: Duration) -> Self {
        TimeoutBody {
            body,
            sleep: None,
            timeout,
            deadline: Instant::now() + timeout,
        }
    }
}

impl<B> Body for TimeoutBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let mut this = self.project();
        match this.body.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *this.deadline = Instant::now() + *this.timeout;
                if this.sleep.is_some() && this.body.is_end_stream() {
                    this.sleep.set(None);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(end_or_error) => {
                this.sleep.set(None);
                return Poll::Ready(end_or_error.map(|r| r.map_err(Into::into)));
            }
            Poll::Pending => {}
        }
        loop {
            match this.sleep.as_mut().as_pin_mut() {
                None => this.sleep.set(Some(sleep_until(*this.deadline))),
                Some(mut sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    if sleep.deadline() < *this.deadline {
                        // Armed before the last frame came: moved on to the
                        // idle timeout after that frame.
                        sleep.reset(*this.deadline);
                        continue;
                    }
                    return Poll::Ready(Some(Err(TimeoutError(()).into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The body sent no frame within the idle timeout.
#[derive(Debug)]
pub(super) struct TimeoutError(());

impl std::fmt::Display for TimeoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no data was received within the idle timeout")
    }
}

impl std::error::Error for TimeoutError {}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    const IDLE: Duration = Duration::from_secs(10);

    /// A body fed by a channel: it waits while the sender is held and
    /// silent, and ends when the sender is dropped.
    struct Channel(mpsc::Receiver<Bytes>);

    impl Body for Channel {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d))))
        }
    }

    fn channel() -> (mpsc::Sender<Bytes>, Pin<Box<TimeoutBody<Channel>>>) {
        let (tx, rx) = mpsc::channel(16);
        (tx, Box::pin(TimeoutBody::new(Channel(rx), IDLE)))
    }

    /// Polls `body` once.
    async fn poll_once<B: Body>(
        body: &mut Pin<Box<TimeoutBody<B>>>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>>
    where
        B::Error: Into<BoxError>,
    {
        std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await
    }

    fn data(frame: Option<Result<Frame<Bytes>, BoxError>>) -> Bytes {
        frame
            .expect("a frame")
            .expect("no error")
            .into_data()
            .expect("data")
    }

    #[tokio::test(start_paused = true)]
    async fn fires_after_the_idle_period_without_a_frame() {
        let (_tx, mut body) = channel();
        let start = Instant::now();
        let err = body.frame().await.expect("an error").expect_err("a stall");
        assert!(err.is::<TimeoutError>(), "{err}");
        assert_eq!(start.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn fires_the_idle_period_after_the_last_frame() {
        let (tx, mut body) = channel();
        let start = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(IDLE / 2).await;
            tx.send(Bytes::from_static(b"a")).await.unwrap();
            // Held, silent.
            std::future::pending::<()>().await;
        });
        assert_eq!(data(body.frame().await), "a");
        let err = body.frame().await.expect("an error").expect_err("a stall");
        assert!(err.is::<TimeoutError>(), "{err}");
        assert_eq!(start.elapsed(), IDLE / 2 + IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_fire_while_frames_come_within_the_period() {
        let (tx, mut body) = channel();
        let start = Instant::now();
        let frames = 10u32;
        tokio::spawn(async move {
            for _ in 0..frames {
                tokio::time::sleep(IDLE * 9 / 10).await;
                tx.send(Bytes::from_static(b"x")).await.unwrap();
            }
        });
        let mut armed_at = None;
        for _ in 0..frames {
            assert_eq!(data(body.frame().await), "x");
            // The sleep armed by the first wait is not reset by frames:
            // only the deadline moves, until the sleep fires early.
            let sleep = body.sleep.as_ref().expect("armed while waiting");
            armed_at.get_or_insert(sleep.deadline());
            assert_eq!(body.deadline, Instant::now() + IDLE);
        }
        assert_eq!(armed_at, Some(start + IDLE));
        assert!(body.frame().await.is_none(), "a clean end");
        assert_eq!(start.elapsed(), IDLE * 9 / 10 * frames);
        assert!(start.elapsed() > IDLE * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_that_is_ready_wins_over_the_timer() {
        let (tx, mut body) = channel();
        assert!(poll_once(&mut body).await.is_pending());
        tokio::time::advance(IDLE * 2).await;
        tx.send(Bytes::from_static(b"late")).await.unwrap();
        assert_eq!(data(body.frame().await), "late");
    }

    #[tokio::test(start_paused = true)]
    async fn is_not_armed_after_the_end_of_the_stream() {
        let (tx, mut body) = channel();
        tokio::spawn(async move {
            tokio::time::sleep(IDLE / 2).await;
            tx.send(Bytes::from_static(b"a")).await.unwrap();
            tokio::time::sleep(IDLE / 2).await;
        });
        assert_eq!(data(body.frame().await), "a");
        assert!(body.sleep.is_some(), "armed while waiting");
        assert!(body.frame().await.is_none(), "a clean end");
        assert!(body.sleep.is_none(), "dropped at the end");
        tokio::time::advance(IDLE * 3).await;
        assert!(body.frame().await.is_none(), "still ended, never a stall");
        assert!(body.sleep.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_of_known_length_drops_the_timer_with_its_last_frame() {
        // An `Incoming` of known length is polled no more after its last
        // byte: the timer goes with that frame.
        let (tx, rx) = mpsc::channel(1);
        let mut body = Box::pin(TimeoutBody::new(Known { rx, left: 1 }, IDLE));
        assert!(poll_once(&mut body).await.is_pending());
        assert!(body.sleep.is_some(), "armed while waiting");
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        assert_eq!(data(body.frame().await), "a");
        assert!(body.is_end_stream());
        assert!(body.sleep.is_none(), "dropped with the last frame");
    }

    /// A body that ends after `left` frames and says so.
    struct Known {
        rx: mpsc::Receiver<Bytes>,
        left: usize,
    }

    impl Body for Known {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            let data = ready!(self.rx.poll_recv(cx));
            self.left -= 1;
            Poll::Ready(data.map(|d| Ok(Frame::data(d))))
        }

        fn is_end_stream(&self) -> bool {
            self.left == 0
        }
    }
}
