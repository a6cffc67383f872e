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
            Command::Openapi => unreachable!(),
        }
    })
}
