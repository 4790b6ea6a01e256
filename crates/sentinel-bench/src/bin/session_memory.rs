//! Measures the heap of `MemorySessionStore` holding many sessions, and
//! checks it stays bounded by its capacity.
//!
//! Every allocation of this process goes through a counting wrapper around
//! the system allocator, so the figures are bytes actually requested from
//! the allocator (live, after the inserts), not an estimate from type sizes.
//! It prints `key=value` pairs on one line for `sentinel-bench run`.
//!
//! Run with: `cargo run --release -p sentinel-bench --bin session-memory -- --sessions 1000000`

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::ExitCode;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use sentinel_core::{Pinned, Tier};
use sentinel_layer::session::{MemorySessionStore, SessionStore};

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static ALLOCATED: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, and only adds bookkeeping on an atomic counter.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            ALLOCATED.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; the caller upholds `dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) };
        ALLOCATED.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            ALLOCATED.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            ALLOCATED.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        new
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocated() -> isize {
    ALLOCATED.load(Ordering::Relaxed)
}

fn rss() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: i64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// A session id shaped like a UUID (36 characters), distinct per `i`.
fn session_id(i: u64) -> String {
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        (h >> 32) as u32,
        (h >> 16) as u16,
        h as u16,
        (i >> 48) as u16,
        i & 0xFFFF_FFFF_FFFF
    )
}

fn insert(
    store: &MemorySessionStore,
    pins: &[Pinned],
    range: std::ops::Range<u64>,
) -> Result<(), String> {
    for i in range {
        let id = session_id(i);
        let pin = &pins[(i % pins.len() as u64) as usize];
        match store.pin_or_get(&id, Some(pin)).now_or_never() {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("the memory store's future was not ready".into()),
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut sessions: u64 = 1_000_000;
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--sessions", Some(n)) if n > 0 => sessions = n,
            _ => {
                eprintln!("usage: session-memory [--sessions N]");
                return ExitCode::FAILURE;
            }
        }
    }
    let pins = [
        Pinned::new(Tier::Simple, "openai", "gpt-4o-mini"),
        Pinned::new(Tier::Simple, "openai", "gpt-4.1-mini"),
        Pinned::new(Tier::Moderate, "openai", "gpt-4o"),
        Pinned::new(Tier::Complex, "openai", "gpt-4.1"),
    ];
    let capacity = usize::try_from(sessions).unwrap_or(usize::MAX);
    let heap_before = allocated();
    let rss_before = rss();
    let store = MemorySessionStore::new().with_limits(capacity, Duration::from_secs(24 * 3600));
    if let Err(e) = insert(&store, &pins, 0..sessions) {
        eprintln!("session-memory: {e}");
        return ExitCode::FAILURE;
    }
    let held = store.len();
    let heap = allocated() - heap_before;
    let rss_growth = rss().zip(rss_before).map(|(a, b)| a - b);

    // Half as many again: the store must stay at its capacity.
    let extra = sessions / 2;
    if let Err(e) = insert(&store, &pins, sessions..sessions + extra) {
        eprintln!("session-memory: {e}");
        return ExitCode::FAILURE;
    }
    let held_after = store.len();
    let heap_after = allocated() - heap_before;
    let n = sessions as f64;
    let bounded = held as u64 == sessions && held_after as u64 == sessions;
    println!(
        "sessions={sessions} held={held} heap_bytes={heap} heap_bytes_per_session={:.1} rss_bytes_per_session={} inserted={} held_after_overflow={held_after} heap_bytes_per_slot_after_overflow={:.1} bounded={bounded}",
        heap as f64 / n,
        rss_growth.map_or("?".into(), |g| format!("{:.1}", g as f64 / n)),
        sessions + extra,
        heap_after as f64 / n,
    );
    if bounded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
