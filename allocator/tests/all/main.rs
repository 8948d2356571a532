//! wasmos-allocator tests: one binary, one module per topic.
//!
//! Scenario tests write the arithmetic next to each assertion, so a reader can
//! check them by hand: `// shares: r1 = 2/9 = 0.22, r2 = 3/9 = 0.33`.

mod mock;

mod drf;
mod events;
mod filters;
mod props;
mod quota;
mod reservations;
mod sim;
