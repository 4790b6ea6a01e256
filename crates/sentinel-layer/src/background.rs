//! The layer's background tasks: provider health checks, background
//! probes of open models, and the shared-breaker sync.
//!
//! They belong to the state every clone of a layer shares. They are started
//! explicitly, once: when the layer is built inside a tokio runtime, when
//! it wraps a service (`Layer::layer`) inside one, or by
//! [`TierRoutingLayer::start_background_tasks`](crate::TierRoutingLayer::start_background_tasks);
//! never from a request. They hold only weak references to the breakers,
//! and stop when the last clone of the layer (or of a service it made) goes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use sentinel_core::TierConfig;
use tokio::task::AbortHandle;

use crate::breaker::shared::SYNC_INTERVAL;
use crate::breaker::state::Breakers;
use crate::health::{self, HealthChecks};
use crate::recovery::{self, ModelProbes};

/// The latest tier config a request saw: what the background probes and
/// the shared-breaker sync look at.
pub(crate) type LastConfig = Arc<ArcSwapOption<TierConfig>>;

/// The tasks, and whether they were started.
pub(crate) struct Background {
    health: Option<HealthChecks>,
    probes: Option<ModelProbes>,
    started: AtomicBool,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Background {
    pub(crate) fn new(health: Option<HealthChecks>, probes: Option<ModelProbes>) -> Self {
        Background {
            health,
            probes,
            started: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// Starts the tasks, once, when inside a runtime (otherwise does
    /// nothing, and a later call may start them).
    pub(crate) fn start(&self, breakers: &Arc<Breakers>, config: &LastConfig) {
        if self.started.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut handles = Vec::new();
        if let Some(checks) = &self.health {
            for target in &checks.targets {
                let task = health::run(Arc::downgrade(breakers), target.clone(), checks.clone());
                handles.push(runtime.spawn(task).abort_handle());
            }
        }
        if let Some(probes) = &self.probes {
            let task = recovery::run(Arc::downgrade(breakers), config.clone(), probes.clone());
            handles.push(runtime.spawn(task).abort_handle());
        }
        if breakers.shared().is_some() {
            let task = sync_shared(Arc::downgrade(breakers), config.clone());
            handles.push(runtime.spawn(task).abort_handle());
        }
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.extend(handles);
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let tasks = match self.tasks.get_mut() {
            Ok(tasks) => tasks,
            Err(poisoned) => poisoned.into_inner(),
        };
        for task in tasks.drain(..) {
            task.abort();
        }
    }
}

/// Reads the shared open state of the current config's models every
/// [`SYNC_INTERVAL`], until the breakers are gone.
async fn sync_shared(breakers: std::sync::Weak<Breakers>, config: LastConfig) {
    loop {
        let Some(breakers) = breakers.upgrade() else {
            return;
        };
        let models: Vec<_> = config
            .load_full()
            .map(|c| {
                c.models()
                    .map(|(_, m)| (m.provider_arc().clone(), m.model_arc().clone()))
                    .collect()
            })
            .unwrap_or_default();
        breakers.sync_shared(&models).await;
        drop(breakers);
        tokio::time::sleep(SYNC_INTERVAL).await;
    }
}
