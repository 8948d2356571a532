//! Counts the primes below N (the input, as decimal text; default 100000) by
//! trial division, logging its attempt and reporting progress through
//! `wasmos:task/context`. Its fuel grows with N, which makes it a handy job
//! for the SJF and SRTF frameworks.

fn primes(input: Vec<u8>) -> Result<Vec<u8>, String> {
    let text = String::from_utf8(input).map_err(|_| "input is not UTF-8; give a number such as 100000".to_string())?;
    let n: u64 = if text.trim().is_empty() {
        100_000
    } else {
        text.trim().parse().map_err(|_| format!("input {:?} is not a number; give one such as 100000", text.trim()))?
    };
    wasmos_guest::context::log(&format!("counting primes below {n} (attempt {})", wasmos_guest::context::attempt()));
    let mut count = 0u64;
    let step = (n / 10).max(1);
    for k in 2..n {
        if (2..).take_while(|d| d * d <= k).all(|d| k % d != 0) {
            count += 1;
        }
        if k % step == 0 {
            wasmos_guest::context::report_progress(k as f32 / n as f32);
        }
    }
    wasmos_guest::context::report_progress(1.0);
    Ok(format!("{count} primes below {n}\n").into_bytes())
}

wasmos_guest::task!(primes);
