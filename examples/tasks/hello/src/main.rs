//! The smallest useful wasmos task: a plain WASI preview1 command.
//!
//! `hello [NAME] [--exit CODE]` greets NAME, prints its arguments and the
//! `GREETING` environment variable, and exits with CODE (default 0).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut name = "world".to_string();
    let mut code = 0;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--exit" => code = it.next().and_then(|c| c.parse().ok()).unwrap_or(1),
            other => name = other.to_string(),
        }
    }
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".to_string());
    println!("{greeting}, {name}!");
    println!("argv: {args:?}");
    eprintln!("hello: done");
    std::process::exit(code);
}
