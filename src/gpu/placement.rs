//! Placement and eviction as pure functions over a snapshot: which GPU(s) a model
//! starts on, which idle models must stop first, or why it cannot start.

use super::human;

/// One GPU as placement sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuView {
    /// Device index.
    pub index: u32,
    /// Product name.
    pub name: String,
    /// Memory in bytes.
    pub total: u64,
    /// Free memory NVML reports (`None` for simulated GPUs: free is total minus what
    /// the models placed there declared).
    pub nvml_free: Option<u64>,
}

/// What a model on the GPUs is doing, for accounting and eviction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    /// Starting or loading (or waking): its memory may not show in NVML yet.
    Starting,
    /// Serving requests (or queueing them), or draining: not evictable.
    Busy {
        /// Requests at the backend.
        in_flight: usize,
    },
    /// Ready with nothing admitted: may be stopped for room.
    Idle,
    /// vLLM sleep mode: its GPU memory counts as free; it may be stopped outright.
    Sleeping,
}

/// A model that holds (or will hold) memory on some GPUs.
#[derive(Clone, Debug, PartialEq)]
pub struct Holder {
    /// Instance name.
    pub model: String,
    /// GPUs it was placed on.
    pub gpus: Vec<u32>,
    /// Memory it declared per GPU (`vram`); `None`: unknown (never evicted for room).
    pub vram: Option<u64>,
    /// What it is doing.
    pub activity: Activity,
    /// Eviction order: lower first.
    pub priority: i32,
    /// When it last became idle (any monotonic unit); older first.
    pub idle_since: u64,
}

/// What a model needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Need {
    /// Instance name.
    pub model: String,
    /// GPUs it spans.
    pub count: u32,
    /// Memory per GPU.
    pub vram: Option<u64>,
    /// Exactly these GPUs (`gpus = [..]`), or any (`gpus = "any"`).
    pub pinned: Option<Vec<u32>>,
}

/// The outcome.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Start on these GPUs after stopping these models (often none).
    Place {
        /// Chosen device indices, in order.
        gpus: Vec<u32>,
        /// Idle or sleeping models to stop first, in order.
        evict: Vec<String>,
    },
    /// Not now: what holds the memory.
    NoRoom(String),
}

/// Free memory of GPU `g` for placement: NVML's free figure minus what starting
/// models will still take, or (simulated) total minus what running models
/// declared. Sleeping models count as free; `hard` counts them as used.
pub fn free_on(g: &GpuView, holders: &[Holder], hard: bool) -> u64 {
    let on = holders.iter().filter(|h| h.gpus.contains(&g.index));
    let mut taken = 0u64;
    for h in on {
        let v = h.vram.unwrap_or(0);
        let counts = match (g.nvml_free.is_some(), h.activity) {
            (_, Activity::Sleeping) => hard,
            // NVML already shows what running models hold.
            (true, Activity::Starting) => true,
            (true, _) => false,
            (false, _) => true,
        };
        if counts {
            taken = taken.saturating_add(v);
        }
    }
    g.nvml_free.unwrap_or(g.total).saturating_sub(taken)
}

fn order(h: &Holder) -> (i32, u64) {
    (h.priority, h.idle_since)
}

/// Pick GPUs for `need`, stopping idle models (lowest priority, then least
/// recently used, first) only when nothing fits without.
pub fn place(need: &Need, gpus: &[GpuView], holders: &[Holder]) -> Decision {
    let others: Vec<Holder> = holders
        .iter()
        .filter(|h| h.model != need.model)
        .cloned()
        .collect();
    let candidates: Vec<&GpuView> = match &need.pinned {
        Some(p) => {
            let mut v = Vec::new();
            for i in p {
                match gpus.iter().find(|g| g.index == *i) {
                    Some(g) => v.push(g),
                    None => {
                        return Decision::NoRoom(format!(
                            "needs GPU {i}, which this host does not have ({} GPU(s) found)",
                            gpus.len()
                        ));
                    }
                }
            }
            v
        }
        None => gpus.iter().collect(),
    };
    let count = need.count.max(1) as usize;
    if candidates.len() < count {
        return Decision::NoRoom(format!("needs {count} GPUs, this host has {}", gpus.len()));
    }
    let Some(vram) = need.vram else {
        // Nothing to check: pinned GPUs, or the ones with the most free memory.
        let mut c = candidates.clone();
        c.sort_by_key(|g| std::cmp::Reverse(free_on(g, &others, false)));
        let mut chosen: Vec<u32> = c.iter().take(count).map(|g| g.index).collect();
        if need.pinned.is_some() {
            chosen = candidates.iter().map(|g| g.index).collect();
        }
        return Decision::Place {
            gpus: chosen,
            evict: Vec::new(),
        };
    };

    // Evictable, in eviction order.
    let mut idle: Vec<&Holder> = others
        .iter()
        .filter(|h| h.activity == Activity::Idle && h.vram.is_some())
        .collect();
    idle.sort_by_key(|h| order(h));

    let mut evicted: Vec<&Holder> = Vec::new();
    let mut step = 0;
    loop {
        let remaining: Vec<Holder> = others
            .iter()
            .filter(|h| !evicted.iter().any(|e| e.model == h.model))
            .cloned()
            .collect();
        if let Some(chosen) = choose(&candidates, &remaining, vram, count, need.pinned.is_some()) {
            // Keep only evictions that freed memory on the chosen GPUs, and of those
            // only the ones still needed (latest first).
            let mut keep: Vec<&Holder> = evicted
                .iter()
                .copied()
                .filter(|h| h.gpus.iter().any(|g| chosen.contains(g)))
                .collect();
            let mut i = keep.len();
            while i > 0 {
                i -= 1;
                let without: Vec<&Holder> = keep
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, h)| *h)
                    .collect();
                let rest: Vec<Holder> = others
                    .iter()
                    .filter(|h| !without.iter().any(|e| e.model == h.model))
                    .cloned()
                    .collect();
                if chosen.iter().all(|c| {
                    free_on(gpus.iter().find(|g| g.index == *c).unwrap(), &rest, false) >= vram
                }) {
                    keep.remove(i);
                }
            }
            let mut evict: Vec<String> = keep.iter().map(|h| h.model.clone()).collect();
            // Sleeping models whose memory this start takes are stopped outright, so
            // they do not try to wake into memory that is gone.
            let rest: Vec<Holder> = others
                .iter()
                .filter(|h| !evict.contains(&h.model))
                .cloned()
                .collect();
            let mut sleepers: Vec<&Holder> = rest
                .iter()
                .filter(|h| {
                    h.activity == Activity::Sleeping && h.gpus.iter().any(|g| chosen.contains(g))
                })
                .collect();
            sleepers.sort_by_key(|h| order(h));
            for s in sleepers {
                let short = chosen.iter().any(|c| {
                    let g = gpus.iter().find(|g| g.index == *c).unwrap();
                    let still: Vec<Holder> = rest
                        .iter()
                        .filter(|h| !evict.contains(&h.model))
                        .cloned()
                        .collect();
                    free_on(g, &still, true) < vram
                });
                if !short {
                    break;
                }
                evict.push(s.model.clone());
            }
            return Decision::Place {
                gpus: chosen,
                evict,
            };
        }
        if step >= idle.len() {
            break;
        }
        evicted.push(idle[step]);
        step += 1;
    }
    Decision::NoRoom(refusal(need, vram, &candidates, &others))
}

/// `count` GPUs among `candidates` with `vram` free each (all of them when pinned),
/// the ones with the most free memory first.
fn choose(
    candidates: &[&GpuView],
    holders: &[Holder],
    vram: u64,
    count: usize,
    pinned: bool,
) -> Option<Vec<u32>> {
    let mut fit: Vec<(u64, u32)> = candidates
        .iter()
        .map(|g| (free_on(g, holders, false), g.index))
        .filter(|(f, _)| *f >= vram)
        .collect();
    if pinned {
        return (fit.len() == candidates.len())
            .then(|| candidates.iter().map(|g| g.index).collect());
    }
    if fit.len() < count {
        return None;
    }
    fit.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut chosen: Vec<u32> = fit.iter().take(count).map(|(_, i)| *i).collect();
    chosen.sort_unstable();
    Some(chosen)
}

/// "needs 18 GiB on one GPU; GPU 0 (RTX 3090): 3.1 GiB free of 24.0 GiB, held by
/// llama-long (2 in flight), …"
fn refusal(need: &Need, vram: u64, candidates: &[&GpuView], holders: &[Holder]) -> String {
    let what = match (&need.pinned, need.count.max(1)) {
        (Some(p), _) => {
            let list: Vec<String> = p.iter().map(u32::to_string).collect();
            if p.len() == 1 {
                format!("needs {} on GPU {}", human(vram), list[0])
            } else {
                format!("needs {} on each of GPUs {}", human(vram), list.join(", "))
            }
        }
        (None, 1) => format!("needs {} on one GPU", human(vram)),
        (None, n) => format!("needs {} on each of {n} GPUs", human(vram)),
    };
    let mut parts = vec![what];
    for g in candidates {
        let free = free_on(g, holders, false);
        let mut held: Vec<String> = holders
            .iter()
            .filter(|h| h.gpus.contains(&g.index))
            .map(|h| {
                let doing = match h.activity {
                    Activity::Starting => "starting".to_string(),
                    Activity::Busy { in_flight } => format!("{in_flight} in flight"),
                    Activity::Idle => "idle".to_string(),
                    Activity::Sleeping => "sleeping".to_string(),
                };
                match h.vram {
                    Some(v) => format!("{} ({}, {doing})", h.model, human(v)),
                    None => format!("{} ({doing})", h.model),
                }
            })
            .collect();
        if held.is_empty() {
            held.push("no model of llmvisor".into());
        }
        parts.push(format!(
            "GPU {} ({}): {} free of {}, held by {}",
            g.index,
            g.name,
            human(free),
            human(g.total),
            held.join(", ")
        ));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn gpus(n: u32) -> Vec<GpuView> {
        (0..n)
            .map(|i| GpuView {
                index: i,
                name: "RTX 3090".into(),
                total: 24 * GIB,
                nvml_free: None,
            })
            .collect()
    }

    fn holder(
        model: &str,
        gpus: &[u32],
        gib: u64,
        activity: Activity,
        prio: i32,
        since: u64,
    ) -> Holder {
        Holder {
            model: model.into(),
            gpus: gpus.to_vec(),
            vram: Some(gib * GIB),
            activity,
            priority: prio,
            idle_since: since,
        }
    }

    fn any(model: &str, gib: u64, count: u32) -> Need {
        Need {
            model: model.into(),
            count,
            vram: Some(gib * GIB),
            pinned: None,
        }
    }

    #[test]
    fn fits_on_the_gpu_with_most_room() {
        let h = [holder("a", &[0], 16, Activity::Busy { in_flight: 1 }, 0, 0)];
        assert_eq!(
            place(&any("new", 18, 1), &gpus(2), &h),
            Decision::Place {
                gpus: vec![1],
                evict: vec![]
            }
        );
        // Pinned: exactly there.
        let pinned = Need {
            pinned: Some(vec![0]),
            ..any("new", 8, 1)
        };
        assert_eq!(
            place(&pinned, &gpus(2), &h),
            Decision::Place {
                gpus: vec![0],
                evict: vec![]
            }
        );
    }

    #[test]
    fn evicts_lowest_priority_then_least_recently_used() {
        let h = [
            holder("recent", &[0], 16, Activity::Idle, 0, 50),
            holder("old", &[1], 16, Activity::Idle, 0, 10),
            holder("vip", &[0], 4, Activity::Idle, 5, 1),
        ];
        assert_eq!(
            place(&any("new", 18, 1), &gpus(2), &h),
            Decision::Place {
                gpus: vec![1],
                evict: vec!["old".into()]
            }
        );
        let h = [
            holder("recent", &[0], 20, Activity::Idle, -1, 50),
            holder("old", &[1], 20, Activity::Idle, 0, 10),
        ];
        assert_eq!(
            place(&any("new", 18, 1), &gpus(2), &h),
            Decision::Place {
                gpus: vec![0],
                evict: vec!["recent".into()]
            }
        );
    }

    #[test]
    fn busy_models_are_not_evicted_and_the_refusal_says_who_holds_memory() {
        let h = [
            holder(
                "llama-long",
                &[0],
                21,
                Activity::Busy { in_flight: 2 },
                0,
                0,
            ),
            holder("coder", &[1], 20, Activity::Starting, 0, 0),
        ];
        let Decision::NoRoom(msg) = place(&any("new", 18, 1), &gpus(2), &h) else {
            panic!()
        };
        assert!(msg.starts_with("needs 18 GiB on one GPU; GPU 0 (RTX 3090): 3 GiB free of 24 GiB, held by llama-long (21 GiB, 2 in flight); GPU 1 (RTX 3090): 4 GiB free"), "{msg}");
        assert!(msg.contains("coder (20 GiB, starting)"), "{msg}");
    }

    #[test]
    fn tensor_parallel_needs_two_free_gpus() {
        let h = [
            holder("day0", &[0], 16, Activity::Idle, 0, 5),
            holder("day1", &[1], 16, Activity::Busy { in_flight: 1 }, 0, 1),
        ];
        let Decision::NoRoom(msg) = place(&any("big", 22, 2), &gpus(2), &h) else {
            panic!()
        };
        assert!(msg.starts_with("needs 22 GiB on each of 2 GPUs"), "{msg}");
        let h = [
            holder("day0", &[0], 16, Activity::Idle, 0, 5),
            holder("day1", &[1], 16, Activity::Idle, 0, 1),
        ];
        assert_eq!(
            place(&any("big", 22, 2), &gpus(2), &h),
            Decision::Place {
                gpus: vec![0, 1],
                evict: vec!["day1".into(), "day0".into()]
            }
        );
        assert!(
            matches!(place(&any("big", 22, 3), &gpus(2), &[]), Decision::NoRoom(m) if m.contains("needs 3 GPUs"))
        );
    }

    #[test]
    fn sleeping_memory_counts_as_free_and_the_sleeper_is_stopped_when_taken() {
        let h = [holder("sleepy", &[0], 20, Activity::Sleeping, 0, 0)];
        let g = gpus(1);
        assert_eq!(free_on(&g[0], &h, false), 24 * GIB);
        assert_eq!(
            place(&any("new", 8, 1), &g, &h),
            Decision::Place {
                gpus: vec![0],
                evict: vec!["sleepy".into()]
            }
        );
        // Room without its memory: it keeps sleeping.
        assert_eq!(
            place(&any("new", 4, 1), &g, &h),
            Decision::Place {
                gpus: vec![0],
                evict: vec![]
            }
        );
    }

    #[test]
    fn nvml_free_counts_only_starting_models() {
        let g = [GpuView {
            index: 0,
            name: "H100".into(),
            total: 80 * GIB,
            nvml_free: Some(30 * GIB),
        }];
        let h = [
            holder("running", &[0], 40, Activity::Busy { in_flight: 0 }, 0, 0),
            holder("starting", &[0], 10, Activity::Starting, 0, 0),
        ];
        assert_eq!(free_on(&g[0], &h, false), 20 * GIB);
        assert!(matches!(
            place(&any("x", 21, 1), &g, &h),
            Decision::NoRoom(_)
        ));
        assert!(matches!(
            place(&any("x", 20, 1), &g, &h),
            Decision::Place { .. }
        ));
    }

    #[test]
    fn missing_pinned_gpu() {
        let n = Need {
            pinned: Some(vec![3]),
            ..any("x", 1, 1)
        };
        assert!(
            matches!(place(&n, &gpus(2), &[]), Decision::NoRoom(m) if m.contains("needs GPU 3"))
        );
    }
}
