//! A scheduler that misbehaves on its first offer, as its config says:
//! `loop` (never returns), `bomb` (allocates until refused), `trap` (panics),
//! `garbage` (launches on an offer it never got). The master must fail this
//! framework cleanly and carry on. Used by the tests; never deploy it for real.

use wasmos_guest::{Call, Launch, Offer, Scheduler};

struct Hostile {
    mode: String,
}

impl Scheduler for Hostile {
    fn init(config: &str) -> Result<Self, String> {
        match config.trim() {
            m @ ("loop" | "bomb" | "trap" | "garbage") => Ok(Hostile { mode: m.to_string() }),
            other => Err(format!("unknown mode {other:?}; use loop, bomb, trap or garbage")),
        }
    }

    fn on_offers(&mut self, offers: Vec<Offer>) -> Vec<Call> {
        match self.mode.as_str() {
            "loop" => {
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => panic!("hostile scheduler panics on purpose"),
            _ => vec![Call::Launch(Launch {
                offer_ids: vec![format!("not-{}", offers.first().map(|o| o.id.as_str()).unwrap_or("an-offer"))],
                tasks: vec![],
                refuse_seconds: None,
            })],
        }
    }
}

wasmos_guest::scheduler!(Hostile);
