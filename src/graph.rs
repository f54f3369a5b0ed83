//! The pipeline as a DAG: one graph node per pipeline node, one edge per `node.output` input.
//!
//! Built with petgraph from each node's upstream indices ([`crate::spec::Pipeline::graph`] reads
//! them off the pipeline), so the graph knows nothing of pipelines. [`Graph::build`] rejects
//! cycles and returns the cycle's members in order, so the error can list them. `--target` selection is [`Graph::ancestors_of`]: the targets plus
//! everything they transitively read.

use std::collections::BTreeSet;

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

/// Indices into the pipeline's `nodes` vector, with dependency edges.
pub struct Graph {
    g: DiGraph<usize, ()>,
    order: Vec<usize>,
}

/// The pipeline has a cycle: these node indices, in dependency order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the pipeline has a cycle")]
pub struct Cycle(pub Vec<usize>);

impl Graph {
    /// Builds the DAG of `upstream.len()` nodes, where `upstream[i]` holds the indices of the
    /// nodes node `i` reads; `Err` holds one cycle.
    pub fn build(upstream: &[BTreeSet<usize>]) -> Result<Graph, Cycle> {
        let n = upstream.len();
        let mut g = DiGraph::new();
        let ids: Vec<NodeIndex> = (0..n).map(|i| g.add_node(i)).collect();
        for (i, ups) in upstream.iter().enumerate() {
            for &u in ups {
                g.add_edge(ids[u], ids[i], ());
            }
        }
        if toposort(&g, None).is_err() {
            return Err(Cycle(find_cycle(&g)));
        }
        // Kahn's algorithm with a min-heap, so ties go to the node written first.
        let mut indeg: Vec<usize> = (0..n).map(|i| g.edges_directed(ids[i], Direction::Incoming).count()).collect();
        let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> =
            (0..n).filter(|&i| indeg[i] == 0).map(std::cmp::Reverse).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(std::cmp::Reverse(i)) = ready.pop() {
            order.push(i);
            for e in g.edges_directed(ids[i], Direction::Outgoing) {
                let j = g[e.target()];
                indeg[j] -= 1;
                if indeg[j] == 0 {
                    ready.push(std::cmp::Reverse(j));
                }
            }
        }
        Ok(Graph { order, g })
    }

    /// All nodes in a dependency-respecting order (ties broken by file order).
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Direct upstream nodes of `i`.
    pub fn upstream(&self, i: usize) -> Vec<usize> {
        self.g.edges_directed(NodeIndex::new(i), Direction::Incoming).map(|e| self.g[e.source()]).collect()
    }

    /// Direct downstream nodes of `i`.
    pub fn downstream(&self, i: usize) -> Vec<usize> {
        self.g.edges_directed(NodeIndex::new(i), Direction::Outgoing).map(|e| self.g[e.target()]).collect()
    }

    /// The targets and everything they need.
    pub fn ancestors_of(&self, targets: &[usize]) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<usize> = targets.to_vec();
        while let Some(i) = stack.pop() {
            if seen.insert(i) {
                stack.extend(self.upstream(i));
            }
        }
        seen
    }

    /// The nodes and everything downstream of them.
    pub fn descendants_of(&self, roots: &[usize]) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<usize> = roots.to_vec();
        while let Some(i) = stack.pop() {
            if seen.insert(i) {
                stack.extend(self.downstream(i));
            }
        }
        seen
    }

    /// Edges as (upstream, downstream) pairs, for `pipe graph`.
    pub fn edges(&self) -> Vec<(usize, usize)> {
        self.g.edge_references().map(|e| (self.g[e.source()], self.g[e.target()])).collect()
    }
}

/// Finds one cycle: the smallest strongly connected component with more than one member (or a
/// self-loop), walked in edge order.
fn find_cycle(g: &DiGraph<usize, ()>) -> Vec<usize> {
    let scc = tarjan_scc(g)
        .into_iter()
        .filter(|c| c.len() > 1 || g.contains_edge(c[0], c[0]))
        .min_by_key(|c| c.len())
        .unwrap_or_default();
    let Some(&start) = scc.iter().min_by_key(|ix| g[**ix]) else {
        return Vec::new();
    };
    let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
    let mut cycle = vec![g[start]];
    let mut at = start;
    loop {
        let next =
            g.edges_directed(at, Direction::Outgoing).map(|e| e.target()).filter(|t| members.contains(t)).min_by_key(|t| g[*t]);
        match next {
            Some(n) if n != start && !cycle.contains(&g[n]) => {
                cycle.push(g[n]);
                at = n;
            }
            _ => break,
        }
    }
    cycle
}
