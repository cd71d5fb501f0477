//! The GPU board: the inventory, every instance that may hold GPU memory, the lock
//! that serialises placement decisions, and the snapshot that `/admin/gpus`
//! (rendered in `api/admin.rs`), metrics and `llmvisor gpus` show.

use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use super::instance::Instance;
use crate::gpu::placement::{Activity, GpuView, Holder, free_on};
use crate::gpu::{Inventory, Snapshot};

/// Shared by every instance of a fleet.
pub(crate) struct Board {
    /// Where GPU facts come from.
    pub inventory: Inventory,
    members: Mutex<Vec<Weak<Instance>>>,
    /// Held while a placement is decided and recorded.
    pub lock: tokio::sync::Mutex<()>,
    /// Woken when memory may have been freed (a stop, a sleep, a model going idle).
    pub changed: Notify,
}

impl Board {
    pub fn new(inventory: Inventory) -> Self {
        Self {
            inventory,
            members: Mutex::new(Vec::new()),
            lock: tokio::sync::Mutex::new(()),
            changed: Notify::new(),
        }
    }

    /// Follow an instance (it stays followed while it exists: a replaced instance
    /// still holds memory until it stops).
    pub fn register(&self, i: &Arc<Instance>) {
        let mut m = self.members.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|w| w.strong_count() > 0);
        m.push(Arc::downgrade(i));
    }

    /// Every instance alive.
    pub fn members(&self) -> Vec<Arc<Instance>> {
        self.members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// What every other instance holds.
    pub fn holders(&self, except: Option<&Instance>) -> Vec<(Arc<Instance>, Holder)> {
        self.members()
            .into_iter()
            .filter(|i| except.is_none_or(|e| !std::ptr::eq(Arc::as_ptr(i), e)))
            .filter_map(|i| i.holder().map(|h| (i, h)))
            .collect()
    }

    /// The GPUs of a snapshot as placement sees them.
    pub fn views(snap: &Snapshot) -> Vec<GpuView> {
        snap.gpus
            .iter()
            .map(|g| GpuView {
                index: g.index,
                name: g.name.clone(),
                total: g.memory_total,
                nvml_free: (!g.simulated).then_some(g.memory_free),
            })
            .collect()
    }

    /// A snapshot where simulated GPUs show what llmvisor's models declared.
    pub fn snapshot(&self) -> (Snapshot, Vec<(Arc<Instance>, Holder)>) {
        let mut snap = self.inventory.snapshot();
        let holders = self.holders(None);
        let hs: Vec<Holder> = holders.iter().map(|(_, h)| h.clone()).collect();
        for g in &mut snap.gpus {
            if g.simulated {
                let view = GpuView {
                    index: g.index,
                    name: g.name.clone(),
                    total: g.memory_total,
                    nvml_free: None,
                };
                g.memory_free = free_on(&view, &hs, false);
                g.memory_used = g.memory_total - g.memory_free;
                g.processes = holders
                    .iter()
                    .filter(|(_, h)| h.gpus.contains(&g.index))
                    .map(|(i, h)| crate::gpu::GpuProcess {
                        pid: 0,
                        used_memory: match h.activity {
                            Activity::Sleeping => Some(0),
                            _ => h.vram,
                        },
                        model: Some(i.name().to_string()),
                    })
                    .collect();
            }
        }
        (snap, holders)
    }
}
