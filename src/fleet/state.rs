//! The state machine of a model instance, as one table.
//!
//! Every change of an instance's state is one [`Transition`]; each names the states
//! it may leave from and the one it enters. [`Instance`](super::Instance) applies
//! them through one function (`Instance::apply`), which checks the table; nothing
//! else sets a state. Guards beyond the state (the start generation, the unit's
//! invocation, a lock-out) are checked by the caller inside the same update.
//!
//! | transition    | from                                                 | to       | when |
//! | ------------- | ---------------------------------------------------- | -------- | ---- |
//! | `Start`       | Stopped, Failed                                      | Starting | a request (or preload, operator, reload) needs it |
//! | `Launched`    | Starting                                             | Loading  | the manager runs its process |
//! | `Adopt`       | Stopped                                              | Loading  | a running unit of an earlier llmvisor (or reload) is kept |
//! | `Healthy`     | Loading                                              | Ready    | the health check answers 200 |
//! | `Refused`     | Starting                                             | Stopped  | no GPU room within the start's time |
//! | `Sleep`       | Ready                                                | Sleeping | idle, `idle_action = "sleep"` |
//! | `Wake`        | Sleeping                                             | Waking   | a request for a sleeping model |
//! | `Woken`       | Waking                                               | Ready    | `POST /wake_up` answered 200 |
//! | `WakeRefused` | Waking                                               | Sleeping | no GPU room to wake into |
//! | `WakeCold`    | Waking                                               | Starting | the wake failed: stopped, started cold |
//! | `Stop`        | Starting, Loading, Ready, Sleeping, Waking           | Draining | operator, shutdown, reload, profile switch |
//! | `IdleStop`    | Ready                                                | Draining | idle for `idle_ttl` |
//! | `Evict`       | Ready, Sleeping                                      | Draining | room on the GPU for another model |
//! | `SleepFailed` | Sleeping                                             | Draining | the backend could not sleep: stopped instead |
//! | `Keep`        | Draining, Sleeping                                   | Ready    | an idle stop, eviction or sleep rolled back: a request came |
//! | `Kill`        | Draining                                             | Stopping | the drain is over; the unit is being stopped |
//! | `Gone`        | Stopping                                             | Stopped  | the unit is gone (or the one a reload replaced) |
//! | `Fail`        | Starting, Loading, Ready, Draining, Sleeping, Waking | Failed   | exit, start error, health timeout |
//!
//! `Idle stop`, `sleep` and `evict` share one protocol ([`Transition::Keep`] is its
//! roll-back): move out of Ready, then a sequentially consistent fence, then look at
//! the admitted requests; a request admitted in the same instant (it fences too, and
//! then sees the state) keeps the model Ready.

/// Lifecycle state of a model instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Not running.
    Stopped,
    /// Being started (unit not yet running, or waiting out a restart backoff).
    Starting,
    /// Running, health check not yet passing.
    Loading,
    /// Serving.
    Ready,
    /// Finishing in-flight requests before a stop.
    Draining,
    /// Being stopped.
    Stopping,
    /// Exited unexpectedly or failed to start.
    Failed,
    /// vLLM sleep mode: the process runs, its weights are in host memory, its GPU
    /// memory is free; the next request wakes it.
    Sleeping,
    /// Being woken (`POST /wake_up`).
    Waking,
}

impl State {
    /// Every state, for metrics.
    pub const ALL: [State; 9] = [
        State::Stopped,
        State::Starting,
        State::Loading,
        State::Ready,
        State::Draining,
        State::Stopping,
        State::Failed,
        State::Sleeping,
        State::Waking,
    ];

    /// Lower-case name used in the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Loading => "loading",
            State::Ready => "ready",
            State::Draining => "draining",
            State::Stopping => "stopping",
            State::Failed => "failed",
            State::Sleeping => "sleeping",
            State::Waking => "waking",
        }
    }
}

/// One edge (or set of edges) of the state machine; see the module's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transition {
    /// Stopped, Failed → Starting.
    Start,
    /// Starting → Loading.
    Launched,
    /// Stopped → Loading.
    Adopt,
    /// Loading → Ready.
    Healthy,
    /// Starting → Stopped.
    Refused,
    /// Ready → Sleeping.
    Sleep,
    /// Sleeping → Waking.
    Wake,
    /// Waking → Ready.
    Woken,
    /// Waking → Sleeping.
    WakeRefused,
    /// Waking → Starting.
    WakeCold,
    /// Starting, Loading, Ready, Sleeping, Waking → Draining.
    Stop,
    /// Ready → Draining.
    IdleStop,
    /// Ready, Sleeping → Draining.
    Evict,
    /// Sleeping → Draining.
    SleepFailed,
    /// Draining, Sleeping → Ready.
    Keep,
    /// Draining → Stopping.
    Kill,
    /// Stopping → Stopped.
    Gone,
    /// Starting, Loading, Ready, Draining, Sleeping, Waking → Failed.
    Fail,
}

use State::*;

/// The table: every transition, the states it leaves from and the state it enters.
pub const TABLE: [(Transition, &[State], State); 18] = [
    (Transition::Start, &[Stopped, Failed], Starting),
    (Transition::Launched, &[Starting], Loading),
    (Transition::Adopt, &[Stopped], Loading),
    (Transition::Healthy, &[Loading], Ready),
    (Transition::Refused, &[Starting], Stopped),
    (Transition::Sleep, &[Ready], Sleeping),
    (Transition::Wake, &[Sleeping], Waking),
    (Transition::Woken, &[Waking], Ready),
    (Transition::WakeRefused, &[Waking], Sleeping),
    (Transition::WakeCold, &[Waking], Starting),
    (
        Transition::Stop,
        &[Starting, Loading, Ready, Sleeping, Waking],
        Draining,
    ),
    (Transition::IdleStop, &[Ready], Draining),
    (Transition::Evict, &[Ready, Sleeping], Draining),
    (Transition::SleepFailed, &[Sleeping], Draining),
    (Transition::Keep, &[Draining, Sleeping], Ready),
    (Transition::Kill, &[Draining], Stopping),
    (Transition::Gone, &[Stopping], Stopped),
    (
        Transition::Fail,
        &[Starting, Loading, Ready, Draining, Sleeping, Waking],
        Failed,
    ),
];

impl Transition {
    /// Every transition, in the table's order.
    pub const ALL: [Transition; 18] = {
        let mut all = [Transition::Start; 18];
        let mut i = 0;
        while i < TABLE.len() {
            all[i] = TABLE[i].0;
            i += 1;
        }
        all
    };

    fn row(self) -> &'static (Transition, &'static [State], State) {
        // The table is in declaration order (checked by a test).
        &TABLE[self as usize]
    }

    /// The states this transition may leave from.
    pub fn from(self) -> &'static [State] {
        self.row().1
    }

    /// The state it enters.
    pub fn to(self) -> State {
        self.row().2
    }

    /// The state after this transition from `from`, if the table allows it.
    pub fn next(self, from: State) -> Option<State> {
        self.from().contains(&from).then(|| self.to())
    }
}

/// Whether any transition leads from `from` to `to` (llama-swap's
/// `isValidTransition`).
pub fn is_valid(from: State, to: State) -> bool {
    TABLE.iter().any(|(_, f, t)| *t == to && f.contains(&from))
}

/// States a stop has nothing to do in: nothing runs.
pub const AT_REST: [State; 2] = [Stopped, Failed];

/// A stop is under way.
pub const STOPPING: [State; 2] = [Draining, Stopping];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_declaration_order_and_complete() {
        for (i, (t, _, _)) in TABLE.iter().enumerate() {
            assert_eq!(*t as usize, i, "{t:?} out of order");
        }
        // Every state is entered by some transition and left by some transition.
        for s in State::ALL {
            assert!(
                TABLE.iter().any(|(_, _, to)| *to == s),
                "{s:?} never entered"
            );
            assert!(
                TABLE.iter().any(|(_, from, _)| from.contains(&s)),
                "{s:?} never left"
            );
        }
    }

    #[test]
    fn edges() {
        assert!(is_valid(Stopped, Starting));
        assert!(is_valid(Failed, Starting));
        assert!(!is_valid(Ready, Starting));
        assert!(!is_valid(Stopped, Ready));
        assert!(!is_valid(Stopping, Failed));
        assert!(!is_valid(Stopped, Failed));
        assert_eq!(Transition::Evict.next(Sleeping), Some(Draining));
        assert_eq!(Transition::Evict.next(Loading), None);
        assert_eq!(Transition::Stop.next(Draining), None);
        assert_eq!(Transition::ALL.len(), TABLE.len());
    }
}
