//! Test-only pause points: a test arms a [`Pause`], the code under test stops at it once and
//! waits until the test releases it. Used to make racers meet deterministically (a cache loader
//! held between its read and its insert, a write held right after its commit).
//!
//! Compiled only for unit tests (`cfg(test)`): production code pays nothing.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// The armed state: the caller's "reached" signal and its "release" wait.
type Armed = (oneshot::Sender<()>, oneshot::Receiver<()>);

/// A point in the code a test can hold the next caller at (clones share the point).
#[derive(Clone, Debug, Default)]
pub(crate) struct Pause {
    armed: Arc<Mutex<Option<Armed>>>,
}

/// The test's side of an armed [`Pause`].
#[derive(Debug)]
pub(crate) struct Held {
    reached: oneshot::Receiver<()>,
    release: oneshot::Sender<()>,
}

impl Pause {
    /// Arms the point: the next caller to reach it stops there until [`Held::release`].
    pub(crate) fn arm(&self) -> Held {
        let (reached_tx, reached) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        if let Ok(mut armed) = self.armed.lock() {
            *armed = Some((reached_tx, release_rx));
        }
        Held { reached, release }
    }

    /// Called by the code under test: stops here when armed, once.
    pub(crate) async fn point(&self) {
        let armed = self.armed.lock().ok().and_then(|mut a| a.take());
        if let Some((reached, release)) = armed {
            let _ = reached.send(());
            let _ = release.await;
        }
    }
}

impl Held {
    /// Waits until a caller stopped at the point.
    pub(crate) async fn reached(&mut self) {
        let _ = (&mut self.reached).await;
    }

    /// Lets the held caller go on.
    pub(crate) fn release(self) {
        let _ = self.release.send(());
    }
}
