//! `calicoctl-rs`: reads a node's status from its daemon over the status API (gRPC).
//!
//! `calicoctl-rs node status` prints Calico's `calicoctl node status` layout ("Calico process is
//! running." and the IPv4 / IPv6 BGP status tables), or "Calico process is not running." with exit
//! status 1 when the daemon cannot be reached. `node peers|routes|blocks|policy|info` show the rest
//! of the API. Every command takes `-o json` (field names: `calico_node::grpc::json`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use calico_node::grpc::{self, json, render, ClientCfg, ClientTls, GrpcAddr};
use calico_proto::v1 as pb;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "calicoctl-rs", version, about = "Query a calico-rs node")]
struct Cli {
    /// The daemon's status API: unix:PATH or tcp:IP:PORT (mutual TLS).
    #[arg(long, global = true, value_name = "unix:PATH|tcp:ADDR", default_value = grpc::DEFAULT_GRPC,
          value_parser = |s: &str| s.parse::<GrpcAddr>().map_err(|e| e.to_string()))]
    grpc: GrpcAddr,
    /// Client certificate (PEM), for tcp:.
    #[arg(long, global = true, value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// Client private key (PEM), for tcp:.
    #[arg(long, global = true, value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) the daemon's certificate must chain to, for tcp:.
    #[arg(long, global = true, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// Name to verify the daemon's certificate against (default: the IP address dialled).
    #[arg(long, global = true, value_name = "NAME")]
    tls_server_name: Option<String>,
    /// Talk plain TCP to a daemon started with --grpc-insecure-tcp.
    #[arg(long, global = true)]
    grpc_insecure_tcp: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Top,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

/// Printed under `calicoctl-rs node --help`; the full list is in `calico_node::grpc::json`.
const JSON_HELP: &str = "\
-o json field names are stable (only ever added to):
  status  {running, ipv4: [{peer_address, peer_type, state, since, since_unix, info, bgp_state,
          as_number, last_error}], ipv6: [...]}; {running: false, error} when not running
  peers   {peers: [{address, as_number, peer_type, description, state, since, since_unix,
          last_error, local_address, capabilities, prefixes_received, prefixes_accepted,
          prefixes_advertised, graceful_restart_stale}]}
  routes  {routes: [{prefix, kind, next_hops, source_peer, as_path, installed, stale}]}
  blocks  {blocks: [{cidr, affinity, pool, used, free}]}
  policy  {table, policies_compiled, rejected: [{namespace, name, reason}], rules, set_elements,
          endpoints, last_apply_micros, last_apply_at}
  info    {name, addresses, as_number, router_id, version, started_at, uptime_seconds, ready,
          live, not_ready_reasons, resource_errors: [{origin, kind, name, field, message,
          severity}]}
  errors  [{origin, kind, name, field, message, severity}]
Times are RFC 3339 UTC (null when unknown). Exit status 1 when the daemon cannot be reached.";

#[derive(Subcommand)]
enum Top {
    /// The node's status.
    #[command(after_help = JSON_HELP)]
    Node {
        #[command(subcommand)]
        what: NodeCmd,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// BGP sessions in Calico's `calicoctl node status` layout.
    Status,
    /// BGP peers with AS, counters and last error.
    Peers,
    /// Best routes and whether each is in the kernel.
    Routes,
    /// IPAM blocks affine to this node.
    Blocks {
        /// Every block the node knows, not only its own.
        #[arg(long)]
        all_nodes: bool,
    },
    /// The policy engine: compiled and rejected policies, rules, last apply.
    Policy,
    /// The node's identity and readiness.
    Info,
    /// Datastore documents that were rejected or are kept at their last good version.
    Errors,
}

impl Cli {
    fn client_cfg(&self) -> anyhow::Result<ClientCfg> {
        let tls = match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(ClientTls {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
                server_name: self.tls_server_name.clone(),
            }),
            _ => anyhow::bail!("--tls-cert, --tls-key and --tls-ca go together"),
        };
        Ok(ClientCfg {
            addr: self.grpc.clone(),
            tls,
            insecure_tcp: self.grpc_insecure_tcp,
        })
    }
}

fn main() -> ExitCode {
    calico_node::cli::exit_quietly_on_broken_pipe();
    let cli = Cli::parse();
    let cfg = match cli.client_cfg() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("calicoctl-rs: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("calicoctl-rs: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&cli, &cfg)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let detail = format!("{e:#}");
            // Calico's wording on stdout, where scripts look; the cause on stderr.
            match cli.output {
                Output::Table => println!("{}", render::NOT_RUNNING),
                Output::Json => print!("{}", json::to_string(&json::not_running(&detail))),
            }
            eprintln!("calicoctl-rs: {detail}");
            ExitCode::FAILURE
        }
    }
}

/// The daemon's identity, readiness and datastore errors.
async fn get_node(
    c: &mut pb::node_status_client::NodeStatusClient<tonic::transport::Channel>,
) -> anyhow::Result<pb::Node> {
    Ok(c.get_node(pb::GetNodeRequest {})
        .await
        .context("GetNode")?
        .into_inner())
}

/// Talks to the daemon and returns what to print.
async fn run(cli: &Cli, cfg: &ClientCfg) -> anyhow::Result<String> {
    let mut c = grpc::connect(cfg).await?;
    let clock = render::Clock::local();
    let json = cli.output == Output::Json;
    let Top::Node { what } = &cli.command;
    Ok(match what {
        NodeCmd::Status | NodeCmd::Peers => {
            let peers = c
                .list_peers(pb::ListPeersRequest {})
                .await
                .context("ListPeers")?
                .into_inner()
                .peers;
            match (what, json) {
                (NodeCmd::Status, false) => {
                    let n = get_node(&mut c).await?;
                    render::render_status(&peers, &clock) + &render::errors_hint(&n.resource_errors)
                }
                (NodeCmd::Status, true) => json::to_string(&json::status(&peers)),
                (_, false) => render::render_peers(&peers, &clock),
                (_, true) => json::to_string(&json::peers(&peers)),
            }
        }
        NodeCmd::Routes => {
            let routes = c
                .list_routes(pb::ListRoutesRequest {})
                .await
                .context("ListRoutes")?
                .into_inner()
                .routes;
            if json {
                json::to_string(&json::routes(&routes))
            } else {
                render::render_routes(&routes)
            }
        }
        NodeCmd::Blocks { all_nodes } => {
            let blocks = c
                .list_blocks(pb::ListBlocksRequest {
                    all_nodes: *all_nodes,
                })
                .await
                .context("ListBlocks")?
                .into_inner()
                .blocks;
            if json {
                json::to_string(&json::blocks(&blocks))
            } else {
                render::render_blocks(&blocks)
            }
        }
        NodeCmd::Policy => {
            let p = c
                .get_policy_status(pb::GetPolicyStatusRequest {})
                .await
                .context("GetPolicyStatus")?
                .into_inner();
            if json {
                json::to_string(&json::policy(&p))
            } else {
                render::render_policy(&p, &clock)
            }
        }
        NodeCmd::Info => {
            let n = get_node(&mut c).await?;
            if json {
                json::to_string(&json::node(&n))
            } else {
                render::render_node(&n)
            }
        }
        NodeCmd::Errors => {
            let n = get_node(&mut c).await?;
            if json {
                json::to_string(&json::resource_errors(&n.resource_errors))
            } else {
                render::render_errors(&n.resource_errors)
            }
        }
    })
}
