//! `futures_timer::Delay` over tokio's timer (see README.md for why this crate exists).
//!
//! A [`Delay`] is a deadline until it is first polled before that deadline; only then does it
//! register with tokio's timer (a per-runtime wheel: no helper thread to wake, unlike
//! futures-timer's). A delay polled after its deadline never registers.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A future that completes once a duration has passed.
pub struct Delay {
    deadline: Instant,
    timer: Option<Timer>,
}

enum Timer {
    /// On a tokio runtime with its time driver, the usual case.
    Tokio(Pin<Box<tokio::time::Sleep>>),
    /// Anywhere else: a thread that sleeps until the deadline, then wakes the last waker.
    Thread(Arc<Mutex<ThreadTimer>>),
}

struct ThreadTimer {
    deadline: Instant,
    waker: Option<Waker>,
    /// The thread sleeping for this timer, to wake when the deadline moves or the delay is
    /// dropped; `None` once it has fired (a delay reset after that needs a new one).
    sleeper: Option<std::thread::Thread>,
    /// The delay was dropped: the sleeping thread ends.
    dropped: bool,
}

impl Delay {
    /// A delay that completes `duration` from now.
    pub fn new(duration: Duration) -> Delay {
        Delay {
            deadline: deadline_after(duration),
            timer: None,
        }
    }

    /// Moves the deadline to `duration` from now, whether or not the delay has completed.
    pub fn reset(&mut self, duration: Duration) {
        self.deadline = deadline_after(duration);
        match &mut self.timer {
            Some(Timer::Tokio(sleep)) => sleep
                .as_mut()
                .reset(tokio::time::Instant::from_std(self.deadline)),
            Some(Timer::Thread(state)) => {
                let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
                state.deadline = self.deadline;
                if let Some(sleeper) = &state.sleeper {
                    sleeper.unpark();
                }
            }
            None => {}
        }
    }
}

impl Drop for Delay {
    fn drop(&mut self) {
        if let Some(Timer::Thread(state)) = &self.timer {
            let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
            state.dropped = true;
            if let Some(sleeper) = &state.sleeper {
                sleeper.unpark();
            }
        }
    }
}

/// The timer for a delay first polled before its `deadline`.
fn start_timer(deadline: Instant) -> Timer {
    if tokio::runtime::Handle::try_current().is_ok() {
        // `sleep_until` panics on a runtime built without its time driver, and polling the
        // sleep panics once its runtime has shut down. Every runtime of this project enables
        // the driver (`enable_all`, `#[tokio::test]`), and libp2p's tasks end with theirs.
        return Timer::Tokio(Box::pin(tokio::time::sleep_until(
            tokio::time::Instant::from_std(deadline),
        )));
    }
    Timer::Thread(Arc::new(Mutex::new(ThreadTimer {
        deadline,
        waker: None,
        sleeper: None,
        dropped: false,
    })))
}

/// Starts a thread that sleeps until `timer`'s deadline (woken early when the deadline moves
/// or the delay is dropped), then wakes the delay's waker. Called with `timer` locked, so the
/// thread is registered as the sleeper before anyone can look for it.
fn sleep_on_thread(timer: &Arc<Mutex<ThreadTimer>>, state: &mut ThreadTimer) {
    let timer = timer.clone();
    let thread = std::thread::spawn(move || {
        loop {
            let mut state = timer.lock().unwrap_or_else(PoisonError::into_inner);
            if state.dropped {
                state.sleeper = None;
                return;
            }
            let now = Instant::now();
            if now >= state.deadline {
                state.sleeper = None;
                let waker = state.waker.take();
                drop(state);
                if let Some(waker) = waker {
                    waker.wake();
                }
                return;
            }
            let left = state.deadline - now;
            drop(state);
            std::thread::park_timeout(left);
        }
    });
    state.sleeper = Some(thread.thread().clone());
}

/// `now + duration`, or a deadline a century away for durations too long to add.
fn deadline_after(duration: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(duration)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

impl Future for Delay {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        match self.timer.get_or_insert_with(|| start_timer(deadline)) {
            Timer::Tokio(sleep) => sleep.as_mut().poll(cx),
            Timer::Thread(timer) => {
                let mut state = timer.lock().unwrap_or_else(PoisonError::into_inner);
                state.waker = Some(cx.waker().clone());
                if state.sleeper.is_none() {
                    sleep_on_thread(timer, &mut state);
                }
                Poll::Pending
            }
        }
    }
}

impl fmt::Debug for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delay")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    /// Generous: these tests check that a delay fires, not how precisely.
    const WAIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_delay_fires_on_tokio_after_its_duration() {
        let started = Instant::now();
        tokio::time::timeout(WAIT, Delay::new(Duration::from_millis(30)))
            .await
            .expect("the delay fires");
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[tokio::test]
    async fn a_reset_moves_a_pending_delay_earlier_and_later() {
        let mut delay = Delay::new(Duration::from_secs(3600));
        let pending = futures_poll(&mut delay);
        assert!(pending.is_pending(), "an hour has not passed");
        delay.reset(Duration::from_millis(20));
        tokio::time::timeout(WAIT, &mut delay)
            .await
            .expect("the earlier deadline fires");
        // Reset after it fired: it waits again.
        let started = Instant::now();
        delay.reset(Duration::from_millis(40));
        assert!(futures_poll(&mut delay).is_pending());
        tokio::time::timeout(WAIT, &mut delay)
            .await
            .expect("the new deadline fires");
        assert!(started.elapsed() >= Duration::from_millis(40));
    }

    #[test]
    fn a_delay_fires_without_a_runtime_and_again_after_a_reset() {
        let started = Instant::now();
        let mut delay = Delay::new(Duration::from_millis(30));
        block_on(&mut delay);
        assert!(started.elapsed() >= Duration::from_millis(30));
        let started = Instant::now();
        delay.reset(Duration::from_millis(30));
        block_on(&mut delay);
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn without_a_runtime_a_reset_to_an_earlier_deadline_fires_early() {
        let mut delay = Delay::new(Duration::from_secs(3600));
        assert!(
            futures_poll(&mut delay).is_pending(),
            "its thread sleeps for an hour"
        );
        let started = Instant::now();
        delay.reset(Duration::from_millis(20));
        block_on(&mut delay);
        assert!(started.elapsed() < WAIT);
    }

    #[test]
    fn without_a_runtime_dropping_a_delay_ends_its_thread() {
        let mut delay = Delay::new(Duration::from_secs(3600));
        assert!(futures_poll(&mut delay).is_pending());
        let Some(Timer::Thread(state)) = &delay.timer else {
            panic!("outside a runtime the delay sleeps on a thread");
        };
        let state = state.clone();
        drop(delay);
        let deadline = Instant::now() + WAIT;
        while state.lock().unwrap().sleeper.is_some() {
            assert!(Instant::now() < deadline, "the thread did not end");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn an_elapsed_delay_is_ready_at_its_first_poll() {
        let mut delay = Delay::new(Duration::ZERO);
        assert!(futures_poll(&mut delay).is_ready());
        assert!(delay.timer.is_none(), "no timer was needed");
    }

    struct ThreadWaker(std::thread::Thread);

    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    /// Polls `delay` once with a waker that does nothing.
    fn futures_poll(delay: &mut Delay) -> Poll<()> {
        let waker = Waker::noop();
        Pin::new(delay).poll(&mut Context::from_waker(waker))
    }

    /// Runs `delay` to completion on this thread, outside any runtime; panics after `WAIT`.
    fn block_on(delay: &mut Delay) {
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let deadline = Instant::now() + WAIT;
        while Pin::new(&mut *delay).poll(&mut cx).is_pending() {
            assert!(Instant::now() < deadline, "the delay did not fire");
            std::thread::park_timeout(WAIT);
        }
    }
}
