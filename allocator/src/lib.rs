//! wasmos-allocator: the first level of two-level scheduling.
//!
//! A pure, event-driven hierarchical DRF allocator in the manner of Apache Mesos's
//! hierarchical allocator: roles (nested, `eng/batch`) with weights, quota
//! guarantees and limits, static and dynamic reservations, offer filters
//! (`refuse_seconds`), suppress and revive, and minimum allocatable resources.
//! [`Allocator::allocate`] returns offers as plain data; the master sends them and
//! reports back what happened through the event methods.
//!
//! Invariants: no I/O, no clock (time is an argument), no threads; the only
//! randomness is the agent shuffle, drawn from a generator seeded by
//! [`Config::seed`], so a seed and a sequence of events always give the same offers.
//!
//! ```
//! use std::time::Duration;
//! use wasmos_allocator::{AgentInfo, Allocator, Config};
//! use wasmos_model::{AgentId, FrameworkId, Resources, Role};
//!
//! let mut alloc = Allocator::new(Config::default());
//! let agent = AgentId::new("a1").unwrap();
//! alloc.add_agent(agent.clone(), AgentInfo::new(Resources::parse("cpus:4;mem:8GiB").unwrap())).unwrap();
//! let fw = FrameworkId::new("batch").unwrap();
//! alloc.add_framework(fw.clone(), &[Role::new("eng").unwrap()]).unwrap();
//!
//! let offers = alloc.allocate(Duration::ZERO);
//! assert_eq!(offers.len(), 1);
//! assert_eq!(offers[0].resources.total().to_string(), "cpus:4;mem:8GiB");
//!
//! // The framework declines: with the default 5 s filter nothing comes back at once...
//! alloc.decline(&offers[0], None, Duration::ZERO).unwrap();
//! assert!(alloc.allocate(Duration::from_secs(1)).is_empty());
//! // ...but it does once the filter has run out.
//! assert_eq!(alloc.allocate(Duration::from_secs(6)).len(), 1);
//! ```
//!
//! The scenario simulator behind `wasmos sim` is in [`sim`].

mod allocator;
mod cycle;
mod qty;
mod rng;
pub mod sim;
mod types;

pub use allocator::Allocator;
pub use types::{
    AgentInfo, Allocation, AllocatorError, Config, DEFAULT_REFUSE, Offer, Quota, RoleStats, default_min_allocatable,
    parse_limit,
};
