//! A task as a WASI 0.2 component (`wasi:cli/run`), built for wasm32-wasip2.
//! Sums the numbers given as arguments, to show that arguments arrive and that
//! a failed `run` maps to a non-zero exit.

fn main() {
    let mut sum: i64 = 0;
    for a in std::env::args().skip(1) {
        match a.parse::<i64>() {
            Ok(n) => sum += n,
            Err(_) => {
                eprintln!("hello-component: {a:?} is not a number");
                std::process::exit(1);
            }
        }
    }
    println!("component says: sum = {sum}");
}
