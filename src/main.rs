use clap::{Parser, Subcommand};
use secateur::config::{LogArgs, ServerArgs, StoreArgs, WorkerArgs};

/// Secateur: pruning-as-a-service for BERT-family transformer models.
///
/// Every flag can also be set through the environment variable shown with it.
#[derive(Parser)]
#[command(name = "secateur", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API and a worker pool in one process.
    Serve {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        worker: WorkerArgs,
    },
    /// Run workers only (they share the database and artifact store with the API).
    Worker {
        #[command(flatten)]
        worker: WorkerArgs,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Print the OpenAPI description (JSON).
    Openapi,
    /// Run a job spec locally on a model directory: no server, no database. Writes the same
    /// files a job would give as artifacts into --out.
    Prune {
        /// A Hugging Face model directory (config.json, model.safetensors, tokenizer files).
        #[arg(long)]
        model: std::path::PathBuf,
        /// A job spec (JSON) without model_id, e.g. {"pruning": {"method": "magnitude", "sparsity": 0.5}}.
        #[arg(long)]
        spec: std::path::PathBuf,
        /// Output directory (created if missing).
        #[arg(long)]
        out: std::path::PathBuf,
        /// Calibration text for methods that need it (wanda, sparsegpt): a .tsv (GLUE, with --task),
        /// .jsonl or SQuAD .json file.
        #[arg(long)]
        calibration: Option<std::path::PathBuf>,
        /// The GLUE task of a .tsv calibration file (e.g. sst2, mrpc).
        #[arg(long)]
        task: Option<String>,
    },
    /// Run an experiment spec locally (fine-tune, prune, recover, evaluate): no server, no
    /// database. Writes the files an experiment job gives as artifacts into --out, and prints
    /// the metrics before and after.
    Experiment {
        /// A Hugging Face model directory (config.json, model.safetensors, tokenizer.json).
        #[arg(long)]
        model: std::path::PathBuf,
        /// An experiment spec (JSON) without model_id and without dataset ids, e.g.
        /// {"task": {"name": "sst2"}, "finetune": {"epochs": 1}, "pruning": {"method": "magnitude", "sparsity": 0.5}, "recovery": {"epochs": 1}}.
        #[arg(long)]
        spec: std::path::PathBuf,
        /// Training data of the spec's task: a GLUE .tsv or a .jsonl file.
        #[arg(long)]
        train: std::path::PathBuf,
        /// Evaluation data (e.g. the GLUE dev file); without it the spec needs task.eval_fraction.
        #[arg(long)]
        eval: Option<std::path::PathBuf>,
        /// Output directory (created if missing).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Time a model's inference forward as Secateur's runtime runs it: a seeded batch of random
    /// token ids (no padding); prints one JSON line with the median time, sequences per second
    /// and the representation (dense, sparse, int8) each linear map ran with.
    Bench {
        /// A model directory Secateur can load (config.json, model.safetensors).
        #[arg(long)]
        model: std::path::PathBuf,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[arg(long, default_value_t = 128)]
        seq_len: usize,
        /// Timed forwards (after one warm-up); the median is reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Seed of the random token ids.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// How the linear maps run: `fastest` (dense or sparse, measured per matrix), `dense`,
        /// or `int8-dynamic` (weights quantized per channel at load, activations per token).
        #[arg(long, default_value = "fastest")]
        runtime: String,
        /// Also write the batch as JSON (`batch`, `seq`, `input_ids`, `attention_mask`,
        /// `token_type_ids`), for running another runtime on the same input.
        #[arg(long)]
        save_input: Option<std::path::PathBuf>,
    },
    /// Manage API keys.
    Apikey {
        #[command(subcommand)]
        command: ApikeyCommand,
    },
}

#[derive(Subcommand)]
enum ApikeyCommand {
    /// Create a key for a tenant (created if missing) and print it. It is shown only once.
    Create {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    secateur::app::tune_allocator();
    if let Command::Openapi = cli.command {
        println!("{}", secateur::api::openapi().to_pretty_json()?);
        return Ok(());
    }
    if let Command::Prune { model, spec, out, calibration, task } = &cli.command {
        return prune_locally(model, spec, out, calibration.as_deref(), task.as_deref());
    }
    if let Command::Experiment { model, spec, train, eval, out } = &cli.command {
        return experiment_locally(model, spec, train, eval.as_deref(), out);
    }
    if let Command::Bench { model, batch, seq_len, runs, threads, seed, runtime, save_input } = &cli.command {
        let workload = secateur::engine::bench::Workload {
            batch: *batch,
            seq_len: *seq_len,
            runs: *runs,
            seed: *seed,
            choice: runtime_choice(runtime)?,
        };
        return bench(model, &workload, *threads, save_input.as_deref());
    }
    secateur::app::init_logging(&cli.log);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve { server, worker } => secateur::app::serve(cli.store, server, worker).await,
            Command::Worker { worker } => secateur::app::worker(cli.store, worker).await,
            Command::Migrate => {
                secateur::app::open(&cli.store).await?;
                tracing::info!("migrations applied");
                Ok(())
            }
            Command::Apikey { command: ApikeyCommand::Create { tenant } } => {
                let name = tenant.trim();
                anyhow::ensure!(!name.is_empty() && name.len() <= 100, "--tenant must be 1 to 100 characters");
                let (store, _) = secateur::app::open(&cli.store).await?;
                let key = secateur::api::auth::create_key(&store, name, false).await?;
                println!("{key}");
                Ok(())
            }
            Command::Openapi | Command::Prune { .. } | Command::Experiment { .. } | Command::Bench { .. } => {
                unreachable!("handled before the runtime starts")
            }
        }
    })
}

/// Runs a local job with a progress bar, then lists the files it wrote.
fn with_progress(
    out: &std::path::Path,
    run: impl FnOnce(Box<dyn Fn(&secateur::jobs::Progress) + Send>) -> anyhow::Result<Vec<secateur::store::ArtifactRow>>,
) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new(1000);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {percent:>3}% {msg}")
            .expect("valid template"),
    );
    let b = bar.clone();
    let produced = run(Box::new(move |p| {
        b.set_position((p.fraction.clamp(0.0, 1.0) * 1000.0) as u64);
        b.set_message(p.stage.clone());
    }));
    bar.finish_and_clear();
    for a in &produced? {
        println!("{}\t{} bytes\tsha256 {}", out.join(&a.name).display(), a.bytes, a.sha256);
    }
    Ok(())
}

fn experiment_locally(
    model: &std::path::Path,
    spec: &std::path::Path,
    train: &std::path::Path,
    eval: Option<&std::path::Path>,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use secateur::data::{Format, Task};
    let spec_bytes = std::fs::read(spec).with_context(|| format!("reading {}", spec.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&spec_bytes).context("the spec is not valid JSON")?;
    let task_name = v.pointer("/task/name").and_then(|t| t.as_str()).context("the spec needs task.name")?;
    let task = Task::parse(task_name).with_context(|| {
        format!("task.name {task_name:?}: expected one of {} or causal_lm", secateur::data::TASK_NAMES)
    })?;
    fn local(path: &std::path::Path, task: Task) -> anyhow::Result<secateur::jobs::LocalDataset<'_>> {
        let format = path.extension().and_then(|e| e.to_str()).and_then(Format::from_extension);
        Ok(match (task, format) {
            // Language modelling reads running text, which has no task.
            (Task::CausalLm, Some(f @ (Format::Text | Format::Jsonl))) => {
                secateur::jobs::LocalDataset { path, format: f, task: None }
            }
            (Task::CausalLm, _) => anyhow::bail!("{}: task causal_lm reads a .txt or .jsonl file", path.display()),
            (_, Some(f)) if f != Format::Text => secateur::jobs::LocalDataset { path, format: f, task: Some(task) },
            _ => anyhow::bail!("{}: expected a .tsv, .jsonl or .json file", path.display()),
        })
    }
    let (train, eval) = (local(train, task)?, eval.map(|e| local(e, task)).transpose()?);
    with_progress(out, |on| secateur::jobs::run_local_experiment(&spec_bytes, model, train, eval, out, on))?;
    let result: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("result.json"))?)?;
    println!(
        "metrics before {}  after {}  sparsity {}",
        result["metrics"]["before"], result["metrics"]["after"], result["sparsity"]
    );
    Ok(())
}

fn prune_locally(
    model: &std::path::Path,
    spec: &std::path::Path,
    out: &std::path::Path,
    calibration: Option<&std::path::Path>,
    task: Option<&str>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use secateur::data::{Format, Task};
    let spec_bytes = std::fs::read(spec).with_context(|| format!("reading {}", spec.display()))?;
    let task = task
        .map(|t| {
            Task::parse(t).with_context(|| format!("--task {t:?}: expected one of {}", secateur::data::TASK_NAMES))
        })
        .transpose()?;
    let calibration = match calibration {
        None => None,
        Some(path) => {
            let Some(format) = path.extension().and_then(|e| e.to_str()).and_then(Format::from_extension) else {
                anyhow::bail!("--calibration {}: expected a .tsv, .jsonl, .json or .txt file", path.display())
            };
            Some(secateur::jobs::LocalDataset { path, format, task })
        }
    };
    with_progress(out, |on| secateur::jobs::run_local(&spec_bytes, model, calibration, out, on))
}

fn runtime_choice(runtime: &str) -> anyhow::Result<secateur::engine::cpu::matrix::Choice> {
    use secateur::engine::cpu::matrix::Choice;
    Ok(match runtime {
        "fastest" => Choice::Fastest,
        "dense" => Choice::Dense,
        "int8-dynamic" => Choice::Int8Dynamic,
        other => anyhow::bail!("--runtime {other:?}: expected fastest, dense or int8-dynamic"),
    })
}

fn bench(
    model: &std::path::Path,
    workload: &secateur::engine::bench::Workload,
    threads: usize,
    save_input: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    anyhow::ensure!(threads >= 1, "--threads must be at least 1");
    let read = |f: &str| std::fs::read(model.join(f)).with_context(|| format!("reading {}", model.join(f).display()));
    let (config, weights) = (read("config.json")?, read("model.safetensors")?);
    if let Some(path) = save_input {
        let cfg =
            secateur::engine::model::ModelConfig::parse(&config).map_err(|e| anyhow::anyhow!("config.json: {e}"))?;
        let ids = secateur::engine::bench::input_ids(&cfg, workload)?;
        let n = ids.len();
        let batch = serde_json::json!({
            "batch": workload.batch, "seq": workload.seq_len, "input_ids": ids,
            "attention_mask": vec![1; n], "token_type_ids": vec![0; n],
        });
        std::fs::write(path, serde_json::to_vec(&batch)?).with_context(|| format!("writing {}", path.display()))?;
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let timing = pool.install(|| secateur::engine::bench::run(&config, &weights, workload))?;
    println!("{}", serde_json::to_string(&timing)?);
    Ok(())
}
