//! Analysis of a generated monorepo of 100,000 files (100 services of 1,000
//! files each, mixed languages), against a plain walk of the same tree (the
//! least any tool that looks at every file must do), in the same run.
//!
//!     cargo bench --bench analyze

use std::path::Path;
use std::time::{Duration, Instant};

use deployd::analysis::analyze;
use deployd::analysis::dockerfile::render;

const SERVICES: usize = 100;
const FILES_PER_SERVICE: usize = 1000;

fn generate(root: &Path) {
    for s in 0..SERVICES {
        let dir = root.join(format!("services/svc-{s:03}"));
        let (manifest, name, body): (&str, &str, String) = match s % 4 {
            0 => ("requirements.txt", "py", "flask==3.0\n".into()),
            1 => ("package.json", "js", format!("{{\"name\":\"svc-{s}\",\"scripts\":{{\"start\":\"node index.js\"}},\"dependencies\":{{\"express\":\"4\"}}}}")),
            2 => ("go.mod", "go", format!("module example.com/svc{s}\n\ngo 1.22\n")),
            _ => ("Cargo.toml", "rs", format!("[package]\nname = \"svc{s}\"\nversion = \"0.1.0\"\n")),
        };
        std::fs::create_dir_all(dir.join("src/pkg")).expect("mkdir");
        std::fs::write(dir.join(manifest), body).expect("write");
        if name == "py" {
            std::fs::write(
                dir.join("app.py"),
                "from flask import Flask\napp = Flask(__name__)\n",
            )
            .expect("write");
        }
        for f in 1..FILES_PER_SERVICE {
            let sub = if f % 2 == 0 { "src" } else { "src/pkg" };
            std::fs::write(
                dir.join(format!("{sub}/file{f}.{name}")),
                format!("// file {f}\n"),
            )
            .expect("write");
        }
    }
}

fn walk(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).expect("read").flatten() {
        if e.file_type().expect("type").is_dir() {
            n += walk(&e.path());
        } else {
            n += 1;
        }
    }
    n
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    generate(dir.path());
    let files = walk(dir.path());
    println!("monorepo: {files} files in {SERVICES} services");

    let walks = (0..5).map(|_| {
        let t = Instant::now();
        assert_eq!(walk(dir.path()), files);
        t.elapsed()
    });
    let walk_time = median(walks.collect());

    // Every service of the monorepo, analyzed and its Dockerfile rendered,
    // as a deploy with source.subdirectory would.
    let runs = (0..5).map(|_| {
        let t = Instant::now();
        for s in 0..SERVICES {
            let plan = analyze(&dir.path().join(format!("services/svc-{s:03}"))).expect("plan");
            assert!(render(&plan, false).is_some());
        }
        t.elapsed()
    });
    let all_services = median(runs.collect());
    let one = all_services / SERVICES as u32;
    println!(
        "walking all {files} files (baseline): {:>8.2} ms",
        walk_time.as_secs_f64() * 1000.0
    );
    println!(
        "analyzing all {SERVICES} services:       {:>8.2} ms ({:.3} ms each; ratio to the walk {:.3})",
        all_services.as_secs_f64() * 1000.0,
        one.as_secs_f64() * 1000.0,
        all_services.as_secs_f64() / walk_time.as_secs_f64()
    );
    println!("analysis reads manifests and the top-level sources only, so its cost does not grow with the tree");
}
