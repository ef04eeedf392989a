//! [`Actor`]: one simulated client of either kind — hand-written on the codec ([`SimClient`]) or
//! driven by the core client state machine ([`CoreSimClient`]) — behind the few calls the world
//! makes on every client. Never: hold logic of its own beyond dispatch.

use surgemq_core::codec::ProtocolVersion;

use super::client::{Ctx, Mode, Role, SimClient};
use super::core_client::CoreSimClient;

/// A simulated client of either kind.
pub(crate) enum Actor {
    /// Hand-written on the codec.
    Hand(Box<SimClient>),
    /// Driven by the core `Client`.
    Core(Box<CoreSimClient>),
}

impl Actor {
    /// Client identifier it connects with.
    pub(crate) fn client_id(&self) -> &str {
        match self {
            Self::Hand(c) => &c.client_id,
            Self::Core(c) => &c.client_id,
        }
    }

    /// Protocol version it speaks.
    pub(crate) fn version(&self) -> ProtocolVersion {
        match self {
            Self::Hand(c) => c.version,
            Self::Core(c) => c.version,
        }
    }

    /// The client does not read its socket before this.
    pub(crate) fn paused_until(&self) -> u64 {
        match self {
            Self::Hand(c) => c.paused_until,
            Self::Core(c) => c.paused_until,
        }
    }

    /// Makes the client a slow reader until `until`.
    pub(crate) fn pause_until(&mut self, until: u64) {
        match self {
            Self::Hand(c) => c.paused_until = until,
            Self::Core(c) => c.paused_until = until,
        }
    }

    /// The core-driven client, if it is one.
    pub(crate) fn core(&self) -> Option<&CoreSimClient> {
        match self {
            Self::Hand(_) => None,
            Self::Core(c) => Some(c),
        }
    }

    /// The core-driven client, if it is one.
    pub(crate) fn core_mut(&mut self) -> Option<&mut CoreSimClient> {
        match self {
            Self::Hand(_) => None,
            Self::Core(c) => Some(c),
        }
    }

    /// When the client next needs to run its timers.
    pub(crate) fn next_wake(&self) -> Option<u64> {
        match self {
            Self::Hand(c) => c.next_wake(),
            Self::Core(c) => c.next_wake(),
        }
    }

    /// Its state, for a diagnosis.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Hand(c) => c.describe(),
            Self::Core(c) => c.describe(),
        }
    }

    /// Disconnected for good.
    pub(crate) fn is_off(&self) -> bool {
        match self {
            Self::Hand(c) => c.is_off(),
            Self::Core(c) => c.is_off(),
        }
    }

    /// Done with its part of the settle phase: intruders gone, everyone else connected with
    /// nothing of its own unacknowledged.
    pub(crate) fn is_settled(&self) -> bool {
        match self {
            Self::Hand(c) if c.role == Role::Intruder => c.is_off(),
            Self::Hand(c) => c.is_settled(),
            Self::Core(c) => c.is_settled(),
        }
    }

    /// Runs whatever timers are due.
    pub(crate) fn on_timer(&mut self, ctx: &mut Ctx) {
        match self {
            Self::Hand(c) => c.on_timer(ctx),
            Self::Core(c) => c.on_timer(ctx),
        }
    }

    /// The connection ended under the client.
    pub(crate) fn on_closed(&mut self, ctx: &mut Ctx) {
        match self {
            Self::Hand(c) => c.on_closed(ctx),
            Self::Core(c) => c.on_closed(ctx),
        }
    }

    /// Enters a new part of the run.
    pub(crate) fn set_mode(&mut self, ctx: &mut Ctx, mode: Mode) {
        match self {
            Self::Hand(c) => c.set_mode(ctx, mode),
            Self::Core(c) => c.set_mode(ctx, mode),
        }
    }

    /// The last publications of the run.
    pub(crate) fn final_round(&mut self, ctx: &mut Ctx) {
        match self {
            Self::Hand(c) => c.final_round(ctx),
            Self::Core(c) => c.final_round(ctx),
        }
    }
}
