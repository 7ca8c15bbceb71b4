//! `--store milvus://HOST:PORT/COLLECTION` for `search` and `serve`, and the Milvus flags of
//! `index --to`: opening a Milvus collection as the pipeline's vector store (feature `milvus`).

use anyhow::Result;
use clap::Args;
use lightningdot::retrieval::{MilvusIndexKind, MilvusUrl};

/// Where `search` / `serve` read vectors from, when not an index directory.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// Vector store instead of --index: `milvus://HOST:PORT/COLLECTION` (written by
    /// `index --to`; needs a build with `--features milvus`). Set MILVUS_TOKEN for servers
    /// with authentication.
    #[arg(long, conflicts_with_all = ["index", "ann", "stream"])]
    pub store: Option<MilvusUrl>,
    /// IVF lists probed per query with --store (default 16); more is slower and closer to exact.
    #[arg(long, requires = "store")]
    pub nprobe: Option<usize>,
    /// Seconds each Milvus request may take before it is retried (3 attempts in all).
    #[arg(long, default_value_t = 10, requires = "store")]
    pub store_timeout: u64,
}

/// Milvus index flags of `index --to milvus://…`.
#[derive(Args, Debug, Clone)]
pub struct MilvusIndexArgs {
    /// Milvus index over the image vectors: flat (exact), ivf_flat, ivf_pq, hnsw or diskann.
    #[arg(long, default_value = "flat")]
    pub milvus_index: MilvusIndexKind,
    /// IVF_FLAT / IVF_PQ: inverted lists (default 1024).
    #[arg(long)]
    pub nlist: Option<usize>,
    /// IVF_PQ: sub-quantisers, dividing the vector size (default: size / 4).
    #[arg(long)]
    pub pq_m: Option<usize>,
    /// IVF_PQ: bits per code (default 8).
    #[arg(long)]
    pub pq_nbits: Option<usize>,
    /// HNSW: graph degree M (default 16).
    #[arg(long)]
    pub hnsw_m: Option<usize>,
    /// HNSW: candidate list while building, efConstruction (default 200).
    #[arg(long)]
    pub ef_construction: Option<usize>,
    /// Rows per Milvus insert request.
    #[arg(long, default_value_t = 2000)]
    pub upload_batch: usize,
}

#[cfg(feature = "milvus")]
impl MilvusIndexArgs {
    pub fn index(&self) -> lightningdot::retrieval::MilvusIndex {
        lightningdot::retrieval::MilvusIndex {
            kind: self.milvus_index,
            nlist: self.nlist,
            pq_m: self.pq_m,
            pq_nbits: self.pq_nbits,
            hnsw_m: self.hnsw_m,
            ef_construction: self.ef_construction,
        }
    }
}

#[cfg(feature = "milvus")]
impl StoreArgs {
    pub fn search_params(&self, ef: Option<usize>) -> lightningdot::retrieval::MilvusSearchParams {
        lightningdot::retrieval::MilvusSearchParams {
            nprobe: self.nprobe,
            ef,
        }
    }
}

#[cfg(feature = "milvus")]
pub fn connect_options(timeout_s: u64) -> lightningdot::retrieval::store::ConnectOptions {
    lightningdot::retrieval::store::ConnectOptions {
        connect_timeout: std::time::Duration::from_secs(timeout_s.clamp(1, 10)),
        timeout: std::time::Duration::from_secs(timeout_s.max(1)),
        token: std::env::var("MILVUS_TOKEN").ok().filter(|t| !t.is_empty()),
        ..Default::default()
    }
}

/// Opens `url` as a vector store.
#[cfg(feature = "milvus")]
pub fn open(
    url: &MilvusUrl,
    args: &StoreArgs,
    ef: Option<usize>,
) -> Result<Box<dyn lightningdot::retrieval::VectorStore>> {
    Ok(Box::new(lightningdot::retrieval::store::MilvusStore::open(
        url,
        args.search_params(ef),
        &connect_options(args.store_timeout),
    )?))
}

#[cfg(not(feature = "milvus"))]
pub fn open(
    url: &MilvusUrl,
    _args: &StoreArgs,
    _ef: Option<usize>,
) -> Result<Box<dyn lightningdot::retrieval::VectorStore>> {
    anyhow::bail!("{url}: this build has no Milvus support (rebuild with `--features milvus`)")
}
