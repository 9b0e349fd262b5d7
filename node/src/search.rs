//! Discovery: ranked, faceted full-text search over the catalog.
//!
//! Every node holds the whole catalog, so every node can answer "what data is there about X, and
//! who owns it?" from memory. [`SearchIndex`] is that answer: an in-RAM [tantivy] index, rebuilt
//! from the catalog on restart and kept current with [`SearchIndex::upsert`] (or
//! [`SearchIndex::try_upsert`], which never waits) and [`SearchIndex::remove`] as entries
//! arrive.
//!
//! # What a query means
//!
//! A query is plain words; there is no syntax to get wrong. Punctuation separates words, case
//! does not matter, English stop words are ignored and words are stemmed ("orders" finds
//! "order"). A product matches when **every** word occurs in at least one of its name, tags,
//! domain, field names, owner, description or field descriptions — or when the whole query is
//! the product's name. Matches are ranked by BM25 over two fields — a title (the name, counted
//! twice, the tags and the domain), boosted, and a body (field names, counted twice, the
//! description, field descriptions and owner) — so a word in the name or the tags is worth more
//! than one in the description; the exact name is worth more than anything, so a product's own
//! name finds it first. An empty query matches every product (then hits are in product-id
//! order), so the filters alone can browse. Filters (domain, owner, tag, PII, version) narrow the
//! matches; facet counts describe all the matches, before paging.
//!
//! # Same catalog, same answer
//!
//! Two nodes that hold the same entries must give the same answer — same hits, same order, same
//! scores — whatever order the entries arrived in and whatever updates and deletes came before.
//! Tantivy alone does not promise that: its BM25 statistics (document frequency, average field
//! length, document count) include deleted documents until segments merge, and its union scorer
//! sums a document's per-field scores in an order that depends on the segment layout. So tantivy
//! is used for what it does well — analysis, the inverted index, postings and field norms — and
//! the scoring is driven here:
//!
//! - the statistics are over live documents only, kept exactly in our table (added on insert,
//!   subtracted on removal): the document count, each field's total length, and each word's
//!   document frequency per field (a vocabulary with a count per word; each product keeps the
//!   ids of its words to give them back). That is our own `Bm25StatisticsProvider`, in effect,
//!   fed to tantivy's `Bm25Weight`;
//! - a document's score is summed in a fixed order — query words by rising document frequency
//!   (then by position in the query), each word's fields in a fixed order, the exact name
//!   last — whatever segment it sits in and whether it is committed yet;
//! - ties are broken by product id, so the order is total.
//!
//! Facets and the total count need every match, so a query visits every matching product; to
//! keep that cheap, the rarest word's postings give the candidates and the other words are
//! looked up only for them (a seek in their postings), facet values live in a small dense row
//! per product, and when most products match, the facets of those that do not are counted and
//! subtracted from the totals.
//!
//! # Commits
//!
//! A tantivy commit costs milliseconds (tens of them on a busy machine: it hands the new segment
//! between several threads), so [`SearchIndex::upsert`] does not commit. It queues the document
//! for tantivy's writer (handed over at the commit: a writer holding uncommitted documents keeps
//! ~14 MiB of arenas) and keeps it, analyzed, in a small pending set that every search scans
//! directly, scoring it with the same BM25 arithmetic tantivy applies once it is committed
//! (same token counts, same quantized field norms, same statistics). So a search sees every
//! upsert that returned before it began, never waits for a commit, and gives the same scores
//! before and after one. The pending set is committed when it reaches [`PENDING_MAX`]
//! products, less a per-index random quarter at most (so that nodes sharing a machine do not
//! all commit at once); [`SearchIndex::try_upsert`] applies its whole batch first, so it may
//! pass that by up to a batch, and leaves the commit to its caller;
//! [`SearchIndex::upsert_many`] (the rebuild on restart) commits once for its batch. A tantivy
//! writer exists only for a commit: opened for it, and closed on a thread of its own once the
//! merges it started are done (an open writer holds three threads and ~2.4 MiB, see
//! `State::commit`).
//!
//! Hits are built from our own table of products, not from tantivy's document store, which
//! spares a decompression per hit; tantivy documents carry a `slot` that points into the table.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock, TryLockError};

use mesh_protocol::{EntryId, ProductId, ProductName, VerifiedCatalogEntry};
use serde::{Deserialize, Serialize};
use tantivy::fieldnorm::FieldNormReader;
use tantivy::index::SegmentId;
use tantivy::postings::Postings;
use tantivy::query::Bm25Weight;
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer,
    StopWordFilter, TextAnalyzer, TokenStream,
};
use tantivy::{
    DocSet, Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TERMINATED, TantivyDocument,
    Term,
};

/// Hits per page when a request asks for none.
pub const LIMIT_DEFAULT: usize = 20;
/// Most hits per page.
pub const LIMIT_MAX: usize = 100;
/// Deepest page start: deeper paging is refused (refine the query instead).
pub const OFFSET_MAX: usize = 10_000;
/// Longest query text, in bytes.
pub const QUERY_BYTES_MAX: usize = 1024;
/// Words of a query that count; later words are ignored.
pub const QUERY_TERMS_MAX: usize = 16;
/// Values listed per facet (the most frequent ones).
pub const FACET_VALUES_MAX: usize = 50;
/// Upserts kept pending (scanned by every search) before they are committed to tantivy.
pub const PENDING_MAX: usize = 256;
/// Most writer changes queued before a commit, whatever the pending set holds: re-upserting a
/// pending product, or removing one, queues changes without growing the pending set.
const QUEUED_MAX: usize = 2 * PENDING_MAX;

/// A discovery query. Every filter is an exact value, as the facets show it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SearchRequest {
    /// Plain words; empty matches every product.
    pub query: String,
    pub domain: Option<String>,
    /// The descriptor's owner (team or contact), not the owner's key.
    pub owner: Option<String>,
    pub tag: Option<String>,
    /// Only products that do (`true`) or do not (`false`) declare PII fields.
    pub pii: Option<bool>,
    /// A major version as the facet shows it (`1`), an exact version (`1.2.0`), or a semver
    /// requirement (`^1.2`, `>=1.0, <3`).
    pub version: Option<String>,
    /// Hits per page: 0 means [`LIMIT_DEFAULT`]; at most [`LIMIT_MAX`].
    pub limit: usize,
    /// Hits to skip, at most [`OFFSET_MAX`].
    pub offset: usize,
}

/// The answer to a [`SearchRequest`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SearchResponse {
    /// Products that match, before paging.
    pub total: usize,
    /// The requested page, best first.
    pub hits: Vec<SearchHit>,
    /// Counts over all `total` matches.
    pub facets: Facets,
}

/// One product found.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SearchHit {
    /// The product id, `name@PeerId`.
    pub product: String,
    pub name: String,
    pub domain: String,
    /// The descriptor's owner (team or contact).
    pub owner: String,
    /// The owner's PeerId, which signs the product's entries and events.
    pub owner_key: String,
    pub version: String,
    pub description: String,
    pub tags: Vec<String>,
    pub has_pii: bool,
    pub revision: u64,
    /// When the owner signed this revision, microseconds since the Unix epoch.
    pub updated_micros: u64,
    /// BM25 relevance; 0 for an empty query.
    pub score: f32,
    /// Peers known to hold the product's log. The index leaves it empty; the node fills it in.
    pub holders: Vec<String>,
}

/// Facet counts over the matching products, each sorted by count, most first, then by value.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Facets {
    pub domain: Vec<FacetCount>,
    pub owner: Vec<FacetCount>,
    pub tag: Vec<FacetCount>,
    /// `true` / `false`: whether products declare PII fields.
    pub pii: Vec<FacetCount>,
    /// Major versions, e.g. `1`; usable as the `version` filter.
    pub version: Vec<FacetCount>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FacetCount {
    pub value: String,
    pub count: usize,
}

/// What [`SearchIndex::try_upsert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The entries are in, searchable now.
    Done,
    /// The entries are in, and a commit is due: [`SearchIndex::commit_if_due`], off the async
    /// runtime.
    CommitDue,
    /// A search or a commit holds the index: nothing was applied.
    Busy,
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("query is {len} bytes, over the limit of {max}")]
    QueryTooLong { len: usize, max: usize },
    #[error("offset {offset} is over the limit of {max}; narrow the query instead")]
    OffsetTooLarge { offset: usize, max: usize },
    #[error("version filter {text:?} is neither a version nor a semver requirement: {reason}")]
    BadVersion { text: String, reason: String },
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("search index: {0}")]
    Io(#[from] std::io::Error),
    #[error("search index: a thread panicked while updating it")]
    Poisoned,
}

/// The discovery index. Cheap to share: `Send + Sync`, every method takes `&self`.
pub struct SearchIndex {
    state: RwLock<State>,
    /// The analyzer tantivy indexes with; cloned to count tokens and to analyze queries.
    analyzer: TextAnalyzer,
    fields: Fields,
    /// Reusable per-query buffers.
    scratch: Mutex<Vec<Scratch>>,
    /// [`PENDING_MAX`] less up to a quarter, drawn per index, so that nodes receiving the same
    /// changes do not all commit at the same moment (which stalls a machine many nodes share,
    /// as in simulations); smaller in tests, to commit often.
    pending_max: usize,
    /// [`QUEUED_MAX`] less twice the same spread.
    queued_max: usize,
    /// [`SEEK_COST`]; changed in tests, to take one path or the other.
    seek_cost: usize,
}

impl SearchIndex {
    pub fn new() -> Result<Self, SearchError> {
        let mut schema = Schema::builder();
        let text_options = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(TOKENIZER)
                .set_fieldnorms(true)
                .set_index_option(IndexRecordOption::WithFreqs),
        );
        let text = TEXT_FIELDS.map(|(name, _)| schema.add_text_field(name, text_options.clone()));
        let name_exact = schema.add_text_field(
            "name_exact",
            TextOptions::default().set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer("raw")
                    .set_fieldnorms(true)
                    .set_index_option(IndexRecordOption::WithFreqs),
            ),
        );
        let slot = schema.add_u64_field(SLOT_FIELD, INDEXED | FAST);
        let index = Index::create_in_ram(schema.build());
        let analyzer = analyzer();
        index.tokenizers().register(TOKENIZER, analyzer.clone());
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let view = View::new(reader.searcher(), None)?;
        let spread = rand::random_range(0..=PENDING_MAX / 4);
        Ok(Self {
            state: RwLock::new(State {
                index,
                closing: None,
                queued: Vec::new(),
                reader,
                view,
                table: Table::default(),
            }),
            analyzer,
            fields: Fields {
                text,
                name_exact,
                slot,
            },
            scratch: Mutex::new(Vec::new()),
            pending_max: PENDING_MAX - spread,
            queued_max: QUEUED_MAX - 2 * spread,
            seek_cost: SEEK_COST,
        })
    }

    /// Adds a product's entry, replacing the product's previous one. An entry older than the
    /// indexed one (a lower revision) or the same entry again changes nothing.
    pub fn upsert(&self, entry: &VerifiedCatalogEntry) -> Result<(), SearchError> {
        let prepared = self.prepare(entry);
        let mut state = self.state.write().map_err(|_| SearchError::Poisoned)?;
        state.apply(&self.fields, prepared, true)?;
        if self.commit_due(&state) {
            state.commit()?;
        }
        Ok(())
    }

    /// Adds entries as [`upsert`](Self::upsert) does, without ever waiting: for a caller on
    /// an async runtime, which must not run a commit (milliseconds of tantivy's work) nor wait
    /// for a search to release the index. When the index is held, nothing is applied
    /// ([`Applied::Busy`]); when the entries make a commit due, it is left to the caller
    /// ([`Applied::CommitDue`]).
    pub fn try_upsert(&self, entries: &[VerifiedCatalogEntry]) -> Result<Applied, SearchError> {
        let prepared: Vec<_> = entries.iter().map(|e| self.prepare(e)).collect();
        let mut state = match self.state.try_write() {
            Ok(state) => state,
            Err(TryLockError::WouldBlock) => return Ok(Applied::Busy),
            Err(TryLockError::Poisoned(_)) => return Err(SearchError::Poisoned),
        };
        for p in prepared {
            state.apply(&self.fields, p, true)?;
        }
        Ok(if self.commit_due(&state) {
            Applied::CommitDue
        } else {
            Applied::Done
        })
    }

    /// Commits if the pending changes have reached the threshold (after
    /// [`Applied::CommitDue`]); blocks for the commit.
    pub fn commit_if_due(&self) -> Result<(), SearchError> {
        let mut state = self.state.write().map_err(|_| SearchError::Poisoned)?;
        if self.commit_due(&state) {
            state.commit()?;
        }
        Ok(())
    }

    /// Re-upserting a pending product replaces it in the pending set but queues a delete and
    /// a document each time: the queue is bounded too.
    fn commit_due(&self, state: &State) -> bool {
        state.table.pending.len() >= self.pending_max || state.queued.len() >= self.queued_max
    }

    /// Adds many entries with one commit, e.g. to rebuild the index from the catalog.
    ///
    /// Searches wait until the batch is committed: it is applied under the lock, a chunk at a
    /// time so that a rebuild never holds the whole catalog analyzed at once, and without
    /// pending terms, since no search can see it before its commit.
    ///
    /// Nothing to add opens no writer: a node starting with an empty catalog would otherwise
    /// open one (its ~2.4 MiB document channel and threads) for an empty commit, all at once
    /// when many nodes start in one process (SIMULATIONS.md, finding 22).
    pub fn upsert_many(&self, entries: &[VerifiedCatalogEntry]) -> Result<(), SearchError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut state = self.state.write().map_err(|_| SearchError::Poisoned)?;
        let writer = state.open_writer()?;
        for chunk in entries.chunks(BATCH_CHUNK) {
            let prepared: Vec<_> = chunk.iter().map(|e| self.prepare(e)).collect();
            for p in prepared {
                state.apply(&self.fields, p, false)?;
            }
            // Hand each chunk over, so the queue never holds the whole catalog.
            state.flush_queued(&writer)?;
        }
        state.commit_with(writer)
    }

    /// Removes a product; removing one that is not indexed does nothing.
    pub fn remove(&self, product: &ProductId) -> Result<(), SearchError> {
        let mut state = self.state.write().map_err(|_| SearchError::Poisoned)?;
        if let Some(slot) = state.table.by_product.get(&product.to_string()).copied() {
            state.drop_slot(&self.fields, slot);
        }
        if state.queued.len() >= self.queued_max {
            state.commit()?;
        }
        Ok(())
    }

    /// How many pending upserts this index commits at (drawn per index, at most
    /// [`PENDING_MAX`]).
    pub fn commit_threshold(&self) -> usize {
        self.pending_max
    }

    /// Products in the index, counting every upsert that returned.
    pub fn len(&self) -> usize {
        self.state.read().map_or(0, |s| s.table.by_product.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the tantivy index takes (postings, term dictionaries, field norms, fast fields),
    /// not counting our table of products nor pending upserts.
    pub fn index_bytes(&self) -> Result<u64, SearchError> {
        let state = self.state.read().map_err(|_| SearchError::Poisoned)?;
        Ok(state.view.searcher.space_usage()?.total().get_bytes())
    }

    pub fn search(&self, request: &SearchRequest) -> Result<SearchResponse, SearchError> {
        let plan = self.plan(request)?;
        let state = self.state.read().map_err(|_| SearchError::Poisoned)?;
        self.run(&state, &plan)
    }

    /// Everything about an entry that can be computed without the lock.
    fn prepare(&self, entry: &VerifiedCatalogEntry) -> Prepared {
        let e = entry.entry();
        let d = &e.descriptor;
        // Parts repeated weigh more: a word of the name counts twice in the title, a word of a
        // field name twice in the body (the term frequency and the field length both count it).
        let name = d.name.as_str();
        let field_names = d.fields.iter().map(|f| f.name.as_str());
        let texts: [Vec<&str>; TEXT_FIELD_COUNT] = [
            [name, name]
                .into_iter()
                .chain(d.tags.iter().map(String::as_str))
                .chain([d.domain.as_str()])
                .collect(),
            field_names
                .clone()
                .chain(field_names)
                .chain([d.description.as_str()])
                .chain(
                    d.fields
                        .iter()
                        .map(|f| f.description.as_str())
                        .filter(|t| !t.is_empty()),
                )
                .chain([d.owner.as_str()])
                .collect(),
        ];
        let mut analyzer = self.analyzer.clone();
        let mut document = TantivyDocument::default();
        let mut tokens = [0u32; TEXT_FIELD_COUNT];
        let mut terms: [Vec<(String, u32)>; TEXT_FIELD_COUNT] = Default::default();
        for (i, values) in texts.iter().enumerate() {
            let mut words = Vec::new();
            for value in values {
                // Tantivy counts the same tokens for its field norm (and quantizes the count).
                let mut stream = analyzer.token_stream(value);
                while stream.advance() {
                    tokens[i] = tokens[i].saturating_add(1);
                    words.push(std::mem::take(&mut stream.token_mut().text));
                }
                document.add_text(self.fields.text[i], value);
            }
            words.sort_unstable();
            for word in words {
                match terms[i].last_mut() {
                    Some((last, freq)) if *last == word => *freq += 1,
                    _ => terms[i].push((word, 1)),
                }
            }
        }
        document.add_text(self.fields.name_exact, d.name.as_str());
        let product = e.product.to_string();
        Prepared {
            document,
            doc: Doc {
                name_len: d.name.as_str().len(),
                product,
                entry_id: entry.id(),
                revision: e.revision,
                updated_micros: e.timestamp_micros,
                domain: d.domain.clone(),
                owner: d.owner.clone(),
                description: d.description.clone(),
                tags: d.tags.clone(),
                version: d.version.clone(),
                has_pii: d.has_pii(),
                tokens,
                words: Default::default(),
                pending: None,
            },
            terms,
        }
    }

    fn plan(&self, request: &SearchRequest) -> Result<Plan, SearchError> {
        if request.query.len() > QUERY_BYTES_MAX {
            return Err(SearchError::QueryTooLong {
                len: request.query.len(),
                max: QUERY_BYTES_MAX,
            });
        }
        if request.offset > OFFSET_MAX {
            return Err(SearchError::OffsetTooLarge {
                offset: request.offset,
                max: OFFSET_MAX,
            });
        }
        let version = request
            .version
            .as_deref()
            .map(VersionFilter::parse)
            .transpose()?;
        let query = request.query.trim();
        let mut terms: Vec<String> = Vec::new();
        let mut analyzer = self.analyzer.clone();
        let mut stream = analyzer.token_stream(query);
        while stream.advance() && terms.len() < QUERY_TERMS_MAX {
            let text = &stream.token().text;
            if !terms.contains(text) {
                terms.push(text.clone());
            }
        }
        let exact_name = ProductName::new(query.to_lowercase())
            .ok()
            .map(|n| n.as_str().to_owned());
        Ok(Plan {
            match_all: query.is_empty(),
            terms,
            exact_name,
            domain: request.domain.clone(),
            owner: request.owner.clone(),
            tag: request.tag.clone(),
            pii: request.pii,
            version,
            offset: request.offset,
            limit: match request.limit {
                0 => LIMIT_DEFAULT,
                n => n.min(LIMIT_MAX),
            },
        })
    }

    fn run(&self, state: &State, plan: &Plan) -> Result<SearchResponse, SearchError> {
        let table = &state.table;
        let Some(filter) = Filter::resolve(table, plan) else {
            // A filter value no product has: nothing matches.
            return Ok(SearchResponse::default());
        };
        let mut facets = FacetCounter::new(table);
        let mut total = 0;
        let want = plan.offset + plan.limit;

        if plan.match_all {
            // Facets over every product that passes the filters, in slot order (streaming
            // through the rows); then the page in product-id order, from the ordered map.
            for (slot, state) in (0..).zip(&table.states) {
                if *state != SlotState::Empty && filter.passes(table, slot) {
                    total += 1;
                    facets.add(&table.rows[slot as usize]);
                }
            }
            let hits = table
                .by_product
                .values()
                .filter(|&&slot| filter.passes(table, slot))
                .take(want)
                .skip(plan.offset)
                .filter_map(|&slot| table.doc(slot).map(|doc| doc.hit(0.0)))
                .collect();
            return Ok(SearchResponse {
                total,
                hits,
                facets: facets.finish(table),
            });
        }

        let mut scratch = self.take_scratch(table.slot_count());
        let result = self.score(state, plan, &mut scratch);
        let response = result.map(|()| {
            let required = required_mask(plan.terms.len());
            let matches = |mask: u32| mask & required == required || mask & EXACT_NAME_BIT != 0;
            let filtered = !filter.is_empty();
            let mut best: BinaryHeap<Ranked<'_>> = BinaryHeap::with_capacity(want + 1);
            let mut rank = |slot: u32| {
                let score = scratch.scores[slot as usize];
                if best.len() < want {
                    best.push(Ranked {
                        score,
                        product: table.product(slot),
                        slot,
                    });
                    return;
                }
                // Most matches lose to the worst kept on the score alone: read the product id
                // (a cache miss) only on a tie.
                if let Some(mut worst) = best.peek_mut()
                    && (score > worst.score
                        || (score == worst.score && table.product(slot) < worst.product))
                {
                    *worst = Ranked {
                        score,
                        product: table.product(slot),
                        slot,
                    };
                }
            };
            let slots = table.slot_count();
            if !filtered && scratch.touched.len() * 2 > table.by_product.len() {
                // Most products match (a common word): count the facets of those that do not,
                // and subtract them from the counts over all products.
                let mut unmatched = FacetCounter::new(table);
                for (slot, (&mask, &state)) in
                    (0..).zip(scratch.masks[..slots].iter().zip(&table.states))
                {
                    if state == SlotState::Empty {
                        continue;
                    }
                    if matches(mask) {
                        total += 1;
                        rank(slot);
                    } else {
                        unmatched.add(&table.rows[slot as usize]);
                    }
                }
                facets = unmatched.complement(table);
            } else {
                let mut visit = |slot: u32| {
                    if matches(scratch.masks[slot as usize])
                        && (!filtered || filter.passes(table, slot))
                    {
                        total += 1;
                        facets.add(&table.rows[slot as usize]);
                        rank(slot);
                    }
                };
                if scratch.touched.len() * 4 > slots {
                    // Many matches: walk the slots in order, which streams through the rows.
                    for (slot, &mask) in (0..).zip(&scratch.masks[..slots]) {
                        if mask != 0 {
                            visit(slot);
                        }
                    }
                } else {
                    for &slot in &scratch.touched {
                        visit(slot);
                    }
                }
            }
            let hits = best
                .into_sorted_vec()
                .into_iter()
                .skip(plan.offset)
                .filter_map(|r| table.doc(r.slot).map(|doc| doc.hit(r.score)))
                .collect();
            SearchResponse {
                total,
                hits,
                facets: facets.finish(table),
            }
        });
        self.return_scratch(scratch);
        response
    }

    /// Scores every live document that matches every query word (or the exact name) into
    /// `scratch`.
    ///
    /// Words are taken rarest first: the first one's postings are walked and give the
    /// candidates; each later word is looked up only for the candidates that are left (a seek
    /// in its postings), unless it is nearly as rare. Document frequencies come from the
    /// table's vocabulary, exact over live products, so the order, the weights and therefore
    /// every sum are the same on every node.
    fn score(&self, state: &State, plan: &Plan, scratch: &mut Scratch) -> Result<(), SearchError> {
        let view = &state.view;
        let table = &state.table;
        let live_docs = table.by_product.len() as u64;
        if live_docs == 0 {
            return Ok(());
        }
        let doc_freqs: Vec<[u64; TEXT_FIELD_COUNT]> = plan
            .terms
            .iter()
            .map(|w| std::array::from_fn(|f| table.vocabulary.doc_freq(w, f)))
            .collect();
        let mut order: Vec<(u64, usize)> = doc_freqs
            .iter()
            .enumerate()
            .map(|(i, df)| (df.iter().sum(), i))
            .collect();
        order.sort_unstable();
        // Later words are looked up for the candidates only if the rarest word is much rarer
        // than the next one; otherwise walking them all is cheaper than collecting candidates.
        let collect = order.len() > 1
            && (order[0].0 as usize).saturating_mul(self.seek_cost) < order[1].0 as usize;
        let mut required_before = 0u32;
        for (n, &(df_total, i)) in order.iter().enumerate() {
            if df_total == 0 {
                // No product has this word, so none has them all (an exact name has them all).
                return Ok(());
            }
            let seek = n > 0
                && collect
                && scratch.candidates.len().saturating_mul(self.seek_cost) < df_total as usize;
            for (f, (_, boost)) in TEXT_FIELDS.iter().enumerate() {
                let doc_freq = doc_freqs[i][f];
                if doc_freq == 0 {
                    continue;
                }
                let clause = Clause {
                    field: self.fields.text[f],
                    term: Term::from_field_text(self.fields.text[f], &plan.terms[i]),
                    word: &plan.terms[i],
                    text_field: Some(f),
                    bit: 1 << i,
                    required_before,
                    weight: bm25(doc_freq, live_docs, table.live_tokens[f], *boost),
                };
                let record = n == 0 && collect;
                if seek {
                    score_candidates(view, table, &clause, scratch)?;
                } else {
                    score_postings(view, table, &clause, record, scratch)?;
                }
                score_pending(table, &clause, scratch);
            }
            if n == 0 && collect {
                // One sorted run per field: a stable sort merges them in linear time.
                scratch.candidates.sort();
            }
            required_before |= 1 << i;
        }
        if let Some(name) = &plan.exact_name {
            // Names are unique per owner: count the owners that use this one.
            let prefix = format!("{name}@");
            let doc_freq = table
                .by_product
                .range(prefix.clone()..)
                .take_while(|(id, _)| id.starts_with(&prefix))
                .count() as u64;
            if doc_freq > 0 {
                let clause = Clause {
                    field: self.fields.name_exact,
                    term: Term::from_field_text(self.fields.name_exact, name),
                    word: name,
                    text_field: None,
                    bit: EXACT_NAME_BIT,
                    required_before: 0,
                    // One token per product.
                    weight: bm25(doc_freq, live_docs, live_docs, EXACT_NAME_BOOST),
                };
                score_postings(view, table, &clause, false, scratch)?;
                score_pending(table, &clause, scratch);
            }
        }
        Ok(())
    }

    fn take_scratch(&self, slots: usize) -> Scratch {
        let mut scratch = self
            .scratch
            .lock()
            .ok()
            .and_then(|mut pool| pool.pop())
            .unwrap_or_default();
        if scratch.scores.len() < slots {
            scratch.scores.resize(slots, 0.0);
            scratch.masks.resize(slots, 0);
        }
        scratch
    }

    fn return_scratch(&self, mut scratch: Scratch) {
        if scratch.touched.len() * 8 > scratch.masks.len() {
            scratch.scores.fill(0.0);
            scratch.masks.fill(0);
        } else {
            for &slot in &scratch.touched {
                scratch.scores[slot as usize] = 0.0;
                scratch.masks[slot as usize] = 0;
            }
        }
        scratch.touched.clear();
        scratch.candidates.clear();
        if let Ok(mut pool) = self.scratch.lock()
            && pool.len() < SCRATCH_POOL_MAX
        {
            pool.push(scratch);
        }
    }
}

impl fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SearchIndex")
            .field("products", &self.len())
            .finish_non_exhaustive()
    }
}

// ---- the index's inner state -----------------------------------------------------------------

const TOKENIZER: &str = "mesh";
const SLOT_FIELD: &str = "slot";
/// Tantivy's minimum for one indexing thread. More would only speed up bulk builds.
const WRITER_HEAP_BYTES: usize = 15_000_000;
/// Longer tokens (hashes, base64) are dropped: nobody types them.
const TOKEN_BYTES_MAX: usize = 40;
const SCRATCH_POOL_MAX: usize = 4;
/// Products analyzed at a time by `upsert_many`.
const BATCH_CHUNK: usize = 1024;
/// A seek in a posting list costs about this many steps of a walk through it.
const SEEK_COST: usize = 8;
/// In a segment's slot array: a document without a slot (none such is ever added).
const NO_SLOT: u32 = u32::MAX;

const TEXT_FIELD_COUNT: usize = 2;
/// The searched fields and their boosts, in the order scores are summed. Two fields, not one
/// per descriptor part: a common word then has two posting lists to walk, not seven, which
/// halves the cost of the heaviest queries. Within a field, a part that should weigh more is
/// indexed more than once (see [`SearchIndex::prepare`]), as in BM25F.
const TEXT_FIELDS: [(&str, f32); TEXT_FIELD_COUNT] = [
    // name (twice), tags, domain
    ("title", 3.0),
    // field names (twice), description, field descriptions, owner
    ("body", 1.0),
];
/// The whole query equal to a product's name outweighs any number of word matches elsewhere.
const EXACT_NAME_BOOST: f32 = 8.0;
const EXACT_NAME_BIT: u32 = 1 << 31;
const _: () = assert!(
    QUERY_TERMS_MAX < 31,
    "query word bits must not reach EXACT_NAME_BIT"
);

/// Lucene's English stop words, and the `s` and `t` left of "customer's" and "don't".
const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these",
    "they", "this", "to", "was", "will", "with", "s", "t",
];

fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(TOKEN_BYTES_MAX))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .filter(StopWordFilter::remove(
            STOP_WORDS.iter().map(|w| (*w).to_owned()),
        ))
        .filter(Stemmer::new(Language::English))
        .build()
}

struct Fields {
    text: [Field; TEXT_FIELD_COUNT],
    name_exact: Field,
    slot: Field,
}

struct State {
    /// A writer is opened for each commit and closed after it (see [`State::commit`]).
    index: Index,
    /// The last commit's writer, finishing its merges before it closes.
    closing: Option<std::thread::JoinHandle<()>>,
    /// Changes for the writer, handed to it only at the next commit: while a tantivy writer
    /// holds an uncommitted document it keeps a segment writer of ~14 MiB of arenas, and a
    /// simulation runs a thousand indexes in one process. Searches see these documents through
    /// the table's pending terms meanwhile.
    queued: Vec<WriterOp>,
    reader: IndexReader,
    /// The last commit, as searches see it, with each segment's document -> slot array.
    view: View,
    table: Table,
}

enum WriterOp {
    Add(TantivyDocument),
    Delete(Term),
}

struct View {
    searcher: Searcher,
    slots: HashMap<SegmentId, Arc<[u32]>>,
}

impl View {
    /// `previous` spares re-reading the segments that did not change.
    fn new(searcher: Searcher, previous: Option<&View>) -> Result<Self, SearchError> {
        let mut slots = HashMap::new();
        for segment in searcher.segment_readers() {
            let id = segment.segment_id();
            let known = previous.and_then(|p| p.slots.get(&id)).cloned();
            let array = match known {
                Some(array) => array,
                None => {
                    let column = segment.fast_fields().u64(SLOT_FIELD)?;
                    (0..segment.max_doc())
                        .map(|doc| {
                            column
                                .first(doc)
                                .and_then(|s| u32::try_from(s).ok())
                                .unwrap_or(NO_SLOT)
                        })
                        .collect()
                }
            };
            slots.insert(id, array);
        }
        Ok(Self { searcher, slots })
    }
}

impl State {
    /// `searchable_now`: keep the analyzed words for searches to scan until the commit.
    fn apply(
        &mut self,
        fields: &Fields,
        prepared: Prepared,
        searchable_now: bool,
    ) -> Result<(), SearchError> {
        let Prepared {
            mut document,
            doc,
            terms,
        } = prepared;
        if let Some(&slot) = self.table.by_product.get(&doc.product) {
            if let Some(current) = self.table.doc(slot)
                && (current.entry_id == doc.entry_id || current.revision > doc.revision)
            {
                return Ok(());
            }
            self.drop_slot(fields, slot);
        }
        let slot = self.table.next_slot();
        document.add_u64(fields.slot, u64::from(slot));
        // A delete by slot only removes documents added before it, and the writer gets the
        // queue in order, so reusing a freed slot here is safe.
        self.queued.push(WriterOp::Add(document));
        self.table.insert(slot, doc, terms, searchable_now);
        Ok(())
    }

    /// Removes a slot's document: from the table now, from tantivy at the next commit.
    fn drop_slot(&mut self, fields: &Fields, slot: u32) {
        self.queued.push(WriterOp::Delete(Term::from_field_u64(
            fields.slot,
            u64::from(slot),
        )));
        self.table.remove(slot);
    }

    /// Hands the queued changes to `writer`, in order, and forgets them: for a rebuild, whose
    /// queue must not hold the whole catalog. If the writer fails (its indexing thread is
    /// gone), the changes not yet handed over stay queued.
    fn flush_queued(&mut self, writer: &IndexWriter) -> Result<(), SearchError> {
        let mut ops = std::mem::take(&mut self.queued).into_iter();
        while let Some(op) = ops.next() {
            match op {
                WriterOp::Add(document) => {
                    if let Err(e) = writer.add_document(document) {
                        self.queued.extend(ops);
                        return Err(e.into());
                    }
                }
                WriterOp::Delete(term) => {
                    writer.delete_term(term);
                }
            }
        }
        Ok(())
    }

    /// Hands copies of the queued changes to `writer`, in order; the queue keeps them until
    /// the commit succeeds, so a failed commit loses nothing (the next one hands them over to
    /// a new writer).
    fn hand_over(&self, writer: &IndexWriter) -> Result<(), SearchError> {
        for op in &self.queued {
            match op {
                WriterOp::Add(document) => {
                    writer.add_document(document.clone())?;
                }
                WriterOp::Delete(term) => {
                    writer.delete_term(term.clone());
                }
            }
        }
        Ok(())
    }

    /// Commits the queued changes, shows the commit to searches, and empties the pending set.
    ///
    /// The writer lives only for the commit. An open tantivy writer holds three threads and a
    /// document channel of 10,000 preallocated slots (~2.4 MiB), which an idle index does not
    /// need: kept open, it was a quarter of an in-process node's memory. Commits come once
    /// per ~200 upserts, so opening one costs little next to the commit itself.
    fn commit(&mut self) -> Result<(), SearchError> {
        let writer = self.open_writer()?;
        self.commit_with(writer)
    }

    fn open_writer(&mut self) -> Result<IndexWriter, SearchError> {
        // tantivy allows one writer per index: the last commit's may still be merging.
        if let Some(closing) = self.closing.take() {
            let _ = closing.join();
        }
        // One indexing and one merging thread: a catalog is small, and a simulation runs a
        // thousand of these indexes in one process (tantivy's default is four merge threads).
        Ok(self.index.writer_with_options(
            tantivy::indexer::IndexWriterOptions::builder()
                .memory_budget_per_thread(WRITER_HEAP_BYTES)
                .num_worker_threads(1)
                .num_merge_threads(1)
                .build(),
        )?)
    }

    /// [`State::commit`] with a writer already open, holding changes handed to it.
    fn commit_with(&mut self, mut writer: IndexWriter) -> Result<(), SearchError> {
        self.hand_over(&writer)?;
        writer.commit()?;
        self.queued.clear();
        self.reader.reload()?;
        self.view = View::new(self.reader.searcher(), Some(&self.view))?;
        self.table.committed();
        // The merges this commit started finish on their own thread, without holding up
        // searches; dropping the writer instead would abandon them and let segments pile up.
        // The next commit waits for them if they are still running.
        let span = tracing::Span::current();
        let closing = std::thread::Builder::new()
            .name("search-merge".into())
            .spawn(move || {
                let _entered = span.enter();
                if let Err(e) = writer.wait_merging_threads() {
                    tracing::warn!("search index: a merge failed: {e}");
                }
            });
        match closing {
            Ok(thread) => self.closing = Some(thread),
            // The writer went with the closure: its merges are abandoned, the commit stands.
            Err(e) => tracing::warn!("search index: cannot start a thread for merges: {e}"),
        }
        Ok(())
    }
}

/// One indexed product, as hits show it: the cold part of a slot.
struct Doc {
    /// `name@PeerId`; the name is the first `name_len` bytes.
    product: String,
    name_len: usize,
    entry_id: EntryId,
    revision: u64,
    updated_micros: u64,
    domain: String,
    owner: String,
    description: String,
    tags: Vec<String>,
    version: semver::Version,
    has_pii: bool,
    /// Tokens per text field, for the live average field lengths.
    tokens: [u32; TEXT_FIELD_COUNT],
    /// Its words' ids in the vocabulary, per text field, to release them when it goes.
    words: [Box<[u32]>; TEXT_FIELD_COUNT],
    /// Until the document is committed: its analyzed words per text field, sorted, with their
    /// frequencies, for searches to score it directly.
    pending: Option<Box<PendingTerms>>,
}

type PendingTerms = [Vec<(String, u32)>; TEXT_FIELD_COUNT];

impl Doc {
    fn name(&self) -> &str {
        &self.product[..self.name_len]
    }

    fn hit(&self, score: f32) -> SearchHit {
        let (name, owner_key) = self.product.split_at(self.name_len);
        SearchHit {
            product: self.product.clone(),
            name: name.to_owned(),
            domain: self.domain.clone(),
            owner: self.owner.clone(),
            owner_key: owner_key.trim_start_matches('@').to_owned(),
            version: self.version.to_string(),
            description: self.description.clone(),
            tags: self.tags.clone(),
            has_pii: self.has_pii,
            revision: self.revision,
            updated_micros: self.updated_micros,
            score,
            holders: Vec::new(),
        }
    }
}

/// Where a slot's document is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum SlotState {
    /// Free.
    #[default]
    Empty,
    /// Added since the last commit: tantivy does not show it yet.
    Pending,
    /// In tantivy's committed segments.
    Committed,
}

/// Tag ids held inline; more spill to the heap.
const INLINE_TAGS: usize = 6;

/// The hot part of a slot: what filters and facets read for every match. Small and dense, so
/// that counting facets over tens of thousands of matches streams through memory.
#[derive(Default)]
struct Row {
    domain: u32,
    owner: u32,
    major: u32,
    has_pii: bool,
    tag_count: u8,
    tags: [u32; INLINE_TAGS],
    more_tags: Option<Box<[u32]>>,
}

impl Row {
    fn tags(&self) -> impl Iterator<Item = u32> + '_ {
        self.tags[..usize::from(self.tag_count).min(INLINE_TAGS)]
            .iter()
            .chain(self.more_tags.iter().flat_map(|t| t.iter()))
            .copied()
    }
}

struct Prepared {
    document: TantivyDocument,
    doc: Doc,
    /// Analyzed words per text field, sorted, with their frequencies.
    terms: PendingTerms,
}

/// The products, by slot, with everything the statistics and facets need.
#[derive(Default)]
struct Table {
    /// Product id text -> slot, ordered: the page order of an empty query.
    by_product: BTreeMap<String, u32>,
    /// By slot: where the document is (the only per-slot data scoring reads).
    states: Vec<SlotState>,
    /// By slot: facet values.
    rows: Vec<Row>,
    /// By slot: the rest.
    docs: Vec<Option<Doc>>,
    free_slots: Vec<u32>,
    /// Slots of documents added since the last commit.
    pending: Vec<u32>,
    domains: Interner,
    owners: Interner,
    tags: Interner,
    majors: Interner,
    /// Tokens per text field over live products.
    live_tokens: [u64; TEXT_FIELD_COUNT],
    /// Live products that declare PII fields.
    pii_live: usize,
    /// Every analyzed word with its document frequency per text field, over live products.
    vocabulary: Vocabulary,
}

impl Table {
    fn doc(&self, slot: u32) -> Option<&Doc> {
        self.docs.get(slot as usize).and_then(Option::as_ref)
    }

    fn state(&self, slot: u32) -> SlotState {
        self.states.get(slot as usize).copied().unwrap_or_default()
    }

    fn product(&self, slot: u32) -> &str {
        self.doc(slot).map_or("", |d| d.product.as_str())
    }

    fn slot_count(&self) -> usize {
        self.states.len()
    }

    fn next_slot(&mut self) -> u32 {
        self.free_slots.pop().unwrap_or_else(|| {
            // Slots are bounded by the catalog's size, far below u32::MAX.
            let slot = u32::try_from(self.states.len()).unwrap_or(u32::MAX);
            self.states.push(SlotState::Empty);
            self.rows.push(Row::default());
            self.docs.push(None);
            slot
        })
    }

    fn insert(&mut self, slot: u32, mut doc: Doc, terms: PendingTerms, searchable_now: bool) {
        doc.words = std::array::from_fn(|f| {
            terms[f]
                .iter()
                .map(|(word, _)| self.vocabulary.add(word, f))
                .collect()
        });
        doc.pending = searchable_now.then(|| Box::new(terms));
        let tags: Vec<u32> = doc.tags.iter().map(|t| self.tags.acquire(t)).collect();
        let mut row = Row {
            domain: self.domains.acquire(&doc.domain),
            owner: self.owners.acquire(&doc.owner),
            major: self.majors.acquire(&doc.version.major.to_string()),
            has_pii: doc.has_pii,
            // At most `tags_max` (32) tags: a u8 holds the count.
            tag_count: u8::try_from(tags.len().min(INLINE_TAGS)).unwrap_or(0),
            tags: [0; INLINE_TAGS],
            more_tags: (tags.len() > INLINE_TAGS).then(|| tags[INLINE_TAGS..].into()),
        };
        for (to, from) in row.tags.iter_mut().zip(&tags) {
            *to = *from;
        }
        for (live, tokens) in self.live_tokens.iter_mut().zip(doc.tokens) {
            *live += u64::from(tokens);
        }
        self.pii_live += usize::from(doc.has_pii);
        self.by_product.insert(doc.product.clone(), slot);
        self.pending.push(slot);
        let i = slot as usize;
        if i < self.states.len() {
            self.states[i] = SlotState::Pending;
            self.rows[i] = row;
            self.docs[i] = Some(doc);
        }
    }

    fn remove(&mut self, slot: u32) {
        let i = slot as usize;
        let Some(doc) = self.docs.get_mut(i).and_then(Option::take) else {
            return;
        };
        let row = std::mem::take(&mut self.rows[i]);
        self.domains.release(row.domain);
        self.owners.release(row.owner);
        self.majors.release(row.major);
        for tag in row.tags() {
            self.tags.release(tag);
        }
        for (live, tokens) in self.live_tokens.iter_mut().zip(doc.tokens) {
            *live -= u64::from(tokens);
        }
        self.pii_live -= usize::from(doc.has_pii);
        for (f, words) in doc.words.iter().enumerate() {
            for &word in words.iter() {
                self.vocabulary.release(word, f);
            }
        }
        self.by_product.remove(&doc.product);
        if self.states[i] == SlotState::Pending {
            self.pending.retain(|&s| s != slot);
        }
        self.states[i] = SlotState::Empty;
        self.free_slots.push(slot);
    }

    /// After a commit: every pending document is in tantivy now.
    fn committed(&mut self) {
        for slot in std::mem::take(&mut self.pending) {
            let i = slot as usize;
            self.states[i] = SlotState::Committed;
            if let Some(doc) = &mut self.docs[i] {
                doc.pending = None;
            }
        }
    }
}

/// The words of live products, with how many products have each in each text field: the
/// document frequencies of BM25, exact whatever the history of updates (tantivy's own count
/// includes deleted documents until their segment is merged).
#[derive(Default)]
struct Vocabulary {
    ids: HashMap<String, u32>,
    words: Vec<String>,
    doc_freqs: Vec<[u32; TEXT_FIELD_COUNT]>,
    free: Vec<u32>,
}

impl Vocabulary {
    fn add(&mut self, word: &str, field: usize) -> u32 {
        let id = match self.ids.get(word) {
            Some(&id) => id,
            None => {
                let id = match self.free.pop() {
                    Some(id) => {
                        self.words[id as usize] = word.to_owned();
                        id
                    }
                    None => {
                        self.words.push(word.to_owned());
                        self.doc_freqs.push([0; TEXT_FIELD_COUNT]);
                        // Bounded by the words in the catalog, far below u32::MAX.
                        u32::try_from(self.words.len() - 1).unwrap_or(u32::MAX)
                    }
                };
                self.ids.insert(word.to_owned(), id);
                id
            }
        };
        if let Some(df) = self.doc_freqs.get_mut(id as usize) {
            df[field] += 1;
        }
        id
    }

    fn release(&mut self, id: u32, field: usize) {
        let Some(df) = self.doc_freqs.get_mut(id as usize) else {
            return;
        };
        df[field] = df[field].saturating_sub(1);
        if df.iter().all(|&n| n == 0) {
            self.ids.remove(&self.words[id as usize]);
            self.words[id as usize] = String::new();
            self.free.push(id);
        }
    }

    fn doc_freq(&self, word: &str, field: usize) -> u64 {
        self.ids
            .get(word)
            .and_then(|&id| self.doc_freqs.get(id as usize))
            .map_or(0, |df| u64::from(df[field]))
    }
}

/// Facet values as small numbers, reference counted so that values no product has any more
/// are forgotten (owners may rename tags forever; the interner must not grow with history).
#[derive(Default)]
struct Interner {
    ids: HashMap<String, u32>,
    values: Vec<String>,
    refs: Vec<u32>,
    free: Vec<u32>,
}

impl Interner {
    fn acquire(&mut self, value: &str) -> u32 {
        if let Some(&id) = self.ids.get(value) {
            self.refs[id as usize] += 1;
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.values[id as usize] = value.to_owned();
                self.refs[id as usize] = 1;
                id
            }
            None => {
                self.values.push(value.to_owned());
                self.refs.push(1);
                // Bounded by the values in the catalog, far below u32::MAX.
                u32::try_from(self.values.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.ids.insert(value.to_owned(), id);
        id
    }

    fn release(&mut self, id: u32) {
        let Some(refs) = self.refs.get_mut(id as usize) else {
            return;
        };
        *refs = refs.saturating_sub(1);
        if *refs == 0 {
            self.ids.remove(&self.values[id as usize]);
            self.values[id as usize].clear();
            self.free.push(id);
        }
    }

    fn get(&self, value: &str) -> Option<u32> {
        self.ids.get(value).copied()
    }

    fn len(&self) -> usize {
        self.values.len()
    }
}

// ---- queries ---------------------------------------------------------------------------------

/// A checked request.
struct Plan {
    match_all: bool,
    /// Analyzed query words, unique, in query order.
    terms: Vec<String>,
    /// The query as a product name, if it could be one.
    exact_name: Option<String>,
    domain: Option<String>,
    owner: Option<String>,
    tag: Option<String>,
    pii: Option<bool>,
    version: Option<VersionFilter>,
    offset: usize,
    limit: usize,
}

enum VersionFilter {
    /// `1`: the major version, as the facet shows it (pre-releases included).
    Major(u64),
    /// `1.2.0`: exactly this version.
    Exact(semver::Version),
    /// `^1.2`, `>=1, <3`: semver's rules.
    Requirement(semver::VersionReq),
}

impl VersionFilter {
    fn parse(text: &str) -> Result<Self, SearchError> {
        let text = text.trim();
        if let Ok(major) = text.parse::<u64>() {
            return Ok(Self::Major(major));
        }
        if let Ok(version) = semver::Version::parse(text) {
            return Ok(Self::Exact(version));
        }
        semver::VersionReq::parse(text)
            .map(Self::Requirement)
            .map_err(|e| SearchError::BadVersion {
                text: text.to_owned(),
                reason: e.to_string(),
            })
    }

    fn matches(&self, version: &semver::Version) -> bool {
        match self {
            Self::Major(major) => version.major == *major,
            Self::Exact(exact) => version == exact,
            Self::Requirement(req) => req.matches(version),
        }
    }
}

/// Filters with their values interned.
struct Filter<'a> {
    domain: Option<u32>,
    owner: Option<u32>,
    tag: Option<u32>,
    pii: Option<bool>,
    version: Option<&'a VersionFilter>,
}

impl<'a> Filter<'a> {
    /// `None` when a filter names a value no product has.
    fn resolve(table: &Table, plan: &'a Plan) -> Option<Self> {
        let intern = |interner: &Interner, value: &Option<String>| match value {
            None => Some(None),
            Some(v) => interner.get(v).map(Some),
        };
        Some(Self {
            domain: intern(&table.domains, &plan.domain)?,
            owner: intern(&table.owners, &plan.owner)?,
            tag: intern(&table.tags, &plan.tag)?,
            pii: plan.pii,
            version: plan.version.as_ref(),
        })
    }

    fn is_empty(&self) -> bool {
        self.domain.is_none()
            && self.owner.is_none()
            && self.tag.is_none()
            && self.pii.is_none()
            && self.version.is_none()
    }

    fn passes(&self, table: &Table, slot: u32) -> bool {
        let Some(row) = table.rows.get(slot as usize) else {
            return false;
        };
        self.domain.is_none_or(|d| row.domain == d)
            && self.owner.is_none_or(|o| row.owner == o)
            && self.tag.is_none_or(|t| row.tags().any(|tag| tag == t))
            && self.pii.is_none_or(|p| row.has_pii == p)
            && self
                .version
                .is_none_or(|v| table.doc(slot).is_some_and(|d| v.matches(&d.version)))
    }
}

struct FacetCounter {
    domain: Vec<usize>,
    owner: Vec<usize>,
    tag: Vec<usize>,
    major: Vec<usize>,
    /// `[false, true]`
    pii: [usize; 2],
}

impl FacetCounter {
    fn new(table: &Table) -> Self {
        Self {
            domain: vec![0; table.domains.len()],
            owner: vec![0; table.owners.len()],
            tag: vec![0; table.tags.len()],
            major: vec![0; table.majors.len()],
            pii: [0; 2],
        }
    }

    fn add(&mut self, row: &Row) {
        for (counts, id) in [
            (&mut self.domain, row.domain),
            (&mut self.owner, row.owner),
            (&mut self.major, row.major),
        ] {
            if let Some(c) = counts.get_mut(id as usize) {
                *c += 1;
            }
        }
        for tag in row.tags() {
            if let Some(c) = self.tag.get_mut(tag as usize) {
                *c += 1;
            }
        }
        self.pii[usize::from(row.has_pii)] += 1;
    }

    /// The counts over all products less these.
    fn complement(self, table: &Table) -> Self {
        let rest = |counts: Vec<usize>, interner: &Interner| -> Vec<usize> {
            (0..interner.len())
                .map(|id| {
                    let all = interner.refs.get(id).map_or(0, |&r| r as usize);
                    all.saturating_sub(counts.get(id).copied().unwrap_or(0))
                })
                .collect()
        };
        let live = table.by_product.len();
        Self {
            domain: rest(self.domain, &table.domains),
            owner: rest(self.owner, &table.owners),
            tag: rest(self.tag, &table.tags),
            major: rest(self.major, &table.majors),
            pii: [
                (live - table.pii_live).saturating_sub(self.pii[0]),
                table.pii_live.saturating_sub(self.pii[1]),
            ],
        }
    }

    fn finish(self, table: &Table) -> Facets {
        let list = |counts: Vec<usize>, interner: &Interner| {
            sorted(
                counts
                    .into_iter()
                    .enumerate()
                    .filter(|&(_, count)| count > 0)
                    .map(|(id, count)| FacetCount {
                        value: interner.values[id].clone(),
                        count,
                    })
                    .collect(),
            )
        };
        Facets {
            domain: list(self.domain, &table.domains),
            owner: list(self.owner, &table.owners),
            tag: list(self.tag, &table.tags),
            pii: sorted(
                [("false", self.pii[0]), ("true", self.pii[1])]
                    .into_iter()
                    .filter(|&(_, count)| count > 0)
                    .map(|(value, count)| FacetCount {
                        value: value.to_owned(),
                        count,
                    })
                    .collect(),
            ),
            version: list(self.major, &table.majors),
        }
    }
}

/// BM25 weights from live statistics.
fn bm25(doc_freq: u64, live_docs: u64, live_tokens: u64, boost: f32) -> Bm25Weight {
    let average_norm = live_tokens as f32 / live_docs as f32;
    // `doc_freq <= live_docs` by construction; tantivy asserts it.
    Bm25Weight::for_one_term_without_explain(doc_freq.min(live_docs), live_docs, average_norm)
        .boost_by(boost)
}

/// Adds a clause's score to a document that has its word, if the document is still a
/// candidate (it has every word taken before).
fn add_score(scratch: &mut Scratch, clause: &Clause<'_>, slot: u32, norm: u8, freq: u32) -> bool {
    let i = slot as usize;
    let Some(mask) = scratch.masks.get_mut(i) else {
        return false;
    };
    if *mask & clause.required_before != clause.required_before {
        return false;
    }
    let first = *mask == 0;
    if first {
        scratch.touched.push(slot);
    }
    *mask |= clause.bit;
    scratch.scores[i] += clause.weight.score(norm, freq);
    first
}

/// Walks the clause's committed postings. `record` keeps the documents first touched as the
/// candidates for later words.
fn score_postings(
    view: &View,
    table: &Table,
    clause: &Clause<'_>,
    record: bool,
    scratch: &mut Scratch,
) -> Result<(), SearchError> {
    for (segment_ord, segment) in (0u32..).zip(view.searcher.segment_readers()) {
        let Some(doc_slots) = view.slots.get(&segment.segment_id()) else {
            continue; // unreachable: the view maps every segment of its searcher
        };
        let inverted = segment.inverted_index(clause.field)?;
        let Some(info) = inverted.get_term_info(&clause.term)? else {
            continue;
        };
        let mut block =
            inverted.read_block_postings_from_terminfo(&info, IndexRecordOption::WithFreqs)?;
        let norms = segment.get_fieldnorms_reader(clause.field)?;
        let alive = segment.alive_bitset();
        while !block.docs().is_empty() {
            for (&doc, &freq) in block.docs().iter().zip(block.freqs()) {
                if alive.is_some_and(|a| !a.is_alive(doc)) {
                    continue;
                }
                let slot = doc_slots.get(doc as usize).copied().unwrap_or(NO_SLOT);
                // A document removed or replaced since the last commit is still alive in
                // tantivy; its slot is empty now, or reused by a pending document.
                if table.state(slot) != SlotState::Committed {
                    continue;
                }
                if add_score(scratch, clause, slot, norms.fieldnorm_id(doc), freq) && record {
                    scratch.candidates.push((segment_ord, doc));
                }
            }
            block.advance();
        }
    }
    Ok(())
}

/// Looks the clause's word up for each committed candidate left, seeking in its postings.
fn score_candidates(
    view: &View,
    table: &Table,
    clause: &Clause<'_>,
    scratch: &mut Scratch,
) -> Result<(), SearchError> {
    let candidates = std::mem::take(&mut scratch.candidates);
    let mut at = 0;
    for (segment_ord, segment) in (0u32..).zip(view.searcher.segment_readers()) {
        let start = at;
        while at < candidates.len() && candidates[at].0 == segment_ord {
            at += 1;
        }
        if start == at {
            continue;
        }
        let Some(doc_slots) = view.slots.get(&segment.segment_id()) else {
            continue;
        };
        let inverted = segment.inverted_index(clause.field)?;
        let Some(info) = inverted.get_term_info(&clause.term)? else {
            continue;
        };
        let mut postings =
            inverted.read_postings_from_terminfo(&info, IndexRecordOption::WithFreqs)?;
        let norms = segment.get_fieldnorms_reader(clause.field)?;
        for &(_, doc) in &candidates[start..at] {
            let slot = doc_slots.get(doc as usize).copied().unwrap_or(NO_SLOT);
            let still = scratch
                .masks
                .get(slot as usize)
                .is_some_and(|m| m & clause.required_before == clause.required_before);
            if !still || table.state(slot) != SlotState::Committed {
                continue;
            }
            // Candidates are sorted; the postings may already be past this one.
            let found = match postings.doc() {
                current if current >= doc => current,
                _ => postings.seek(doc),
            };
            if found == TERMINATED {
                break;
            }
            if found == doc {
                add_score(
                    scratch,
                    clause,
                    slot,
                    norms.fieldnorm_id(doc),
                    postings.term_freq(),
                );
            }
        }
    }
    scratch.candidates = candidates;
    Ok(())
}

/// Scores the documents not committed yet, from their analyzed words, with the counts tantivy
/// will record for them: so a document scores the same before and after its commit.
fn score_pending(table: &Table, clause: &Clause<'_>, scratch: &mut Scratch) {
    for &slot in &table.pending {
        let Some(doc) = table.doc(slot) else { continue };
        let Some(terms) = &doc.pending else { continue };
        let (freq, tokens) = match clause.text_field {
            Some(f) => {
                let Ok(at) = terms[f].binary_search_by(|(w, _)| w.as_str().cmp(clause.word)) else {
                    continue;
                };
                (terms[f][at].1, doc.tokens[f])
            }
            None if doc.name() == clause.word => (1, 1),
            None => continue,
        };
        add_score(
            scratch,
            clause,
            slot,
            FieldNormReader::fieldnorm_to_id(tokens),
            freq,
        );
    }
}

fn sorted(mut counts: Vec<FacetCount>) -> Vec<FacetCount> {
    counts.sort_unstable_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
    counts.truncate(FACET_VALUES_MAX);
    counts
}

fn required_mask(terms: usize) -> u32 {
    (1u32 << terms) - 1
}

struct Clause<'a> {
    field: Field,
    term: Term,
    /// The term's text, to look up in pending documents.
    word: &'a str,
    /// The index of `field` in [`TEXT_FIELDS`]; `None` for the exact name.
    text_field: Option<usize>,
    /// The query word's bit in the match mask.
    bit: u32,
    /// The bits of the words taken before: a document without them all cannot match.
    required_before: u32,
    weight: Bm25Weight,
}

/// Per-query buffers, indexed by slot and reset after each query (only what was touched).
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    /// Which query words (bits 0..) and whether the exact name (bit 31) matched.
    masks: Vec<u32>,
    touched: Vec<u32>,
    /// Committed documents that have the rarest word: (segment ordinal, document), sorted.
    candidates: Vec<(u32, u32)>,
}

/// A scored candidate. Ordered worst first, so that a max-heap keeps the worst on top: a lower
/// score is worse, and on equal scores the larger product id.
struct Ranked<'a> {
    score: f32,
    product: &'a str,
    slot: u32,
}

impl Ord for Ranked<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then_with(|| self.product.cmp(other.product))
    }
}

impl PartialOrd for Ranked<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked<'_> {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use mesh_protocol::descriptor::Slo;
    use mesh_protocol::{
        AccessPolicy, CatalogEntry, Config, Descriptor, Field, FieldType, SecretKey,
    };
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    #[derive(Clone)]
    struct Spec {
        name: String,
        domain: String,
        owner: String,
        description: String,
        tags: Vec<String>,
        version: String,
        /// (name, pii, description)
        fields: Vec<(String, bool, String)>,
    }

    fn spec(name: &str, domain: &str, description: &str, tags: &[&str]) -> Spec {
        Spec {
            name: name.into(),
            domain: domain.into(),
            owner: format!("{domain}-team@example.com"),
            description: description.into(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            version: "1.0.0".into(),
            fields: vec![("id".into(), false, "primary key".into())],
        }
    }

    fn entry(key: &SecretKey, revision: u64, s: &Spec) -> VerifiedCatalogEntry {
        let name = ProductName::new(s.name.clone()).unwrap();
        let descriptor = Descriptor {
            name: name.clone(),
            domain: s.domain.clone(),
            owner: s.owner.clone(),
            description: s.description.clone(),
            tags: s.tags.clone(),
            version: semver::Version::parse(&s.version).unwrap(),
            fields: s
                .fields
                .iter()
                .map(|(name, pii, description)| Field {
                    name: name.clone(),
                    field_type: FieldType::String,
                    pii: *pii,
                    nullable: false,
                    description: description.clone(),
                })
                .collect(),
            output_ports: Vec::new(),
            inputs: Vec::new(),
            slo: Slo::default(),
            access: AccessPolicy::Public,
        };
        CatalogEntry {
            product: ProductId::new(key.public(), name),
            revision,
            timestamp_micros: 1_700_000_000_000_000 + revision,
            descriptor,
            consumes: Vec::new(),
        }
        .sign(key, &Config::default())
        .unwrap()
    }

    fn key(n: u8) -> SecretKey {
        SecretKey::from_bytes(&[n; 32])
    }

    fn query(q: &str) -> SearchRequest {
        SearchRequest {
            query: q.into(),
            ..SearchRequest::default()
        }
    }

    fn names(response: &SearchResponse) -> Vec<&str> {
        response.hits.iter().map(|h| h.name.as_str()).collect()
    }

    fn facet(counts: &[FacetCount]) -> Vec<(&str, usize)> {
        counts.iter().map(|c| (c.value.as_str(), c.count)).collect()
    }

    fn index_of(entries: &[VerifiedCatalogEntry]) -> SearchIndex {
        let index = SearchIndex::new().unwrap();
        index.upsert_many(entries).unwrap();
        index
    }

    #[test]
    fn adding_nothing_opens_no_writer() {
        let index = SearchIndex::new().unwrap();
        index.upsert_many(&[]).unwrap();
        assert!(
            index.state.read().unwrap().closing.is_none(),
            "an empty batch opened a writer and committed"
        );
        // A batch with an entry commits; its writer finishes on a thread of its own.
        let k = key(1);
        index
            .upsert_many(&[entry(&k, 1, &spec("orders", "sales", "Orders.", &[]))])
            .unwrap();
        assert!(index.state.read().unwrap().closing.is_some());
        assert_eq!(names(&index.search(&query("orders")).unwrap()), ["orders"]);
    }

    #[test]
    fn try_upsert_never_waits_and_leaves_the_commit_to_its_caller() {
        let mut index = SearchIndex::new().unwrap();
        index.pending_max = 2;
        let k = key(1);
        let orders = entry(&k, 1, &spec("orders", "sales", "Orders.", &[]));
        let invoices = entry(&k, 1, &spec("invoices", "billing", "Invoices.", &[]));
        let refunds = entry(&k, 1, &spec("refunds", "billing", "Refunds.", &[]));

        // In and searchable at once, without a commit.
        assert_eq!(index.try_upsert(&[orders]).unwrap(), Applied::Done);
        assert_eq!(names(&index.search(&query("orders")).unwrap()), ["orders"]);
        assert!(
            index.state.read().unwrap().closing.is_none(),
            "no commit yet"
        );

        // Held by a search: nothing applied, and no wait.
        {
            let _searching = index.state.read().unwrap();
            assert_eq!(
                index.try_upsert(std::slice::from_ref(&invoices)).unwrap(),
                Applied::Busy
            );
        }
        assert_eq!(index.len(), 1);

        // At the threshold the commit is due, and left to the caller.
        assert_eq!(index.try_upsert(&[invoices]).unwrap(), Applied::CommitDue);
        assert!(
            index.state.read().unwrap().closing.is_none(),
            "not committed"
        );
        index.commit_if_due().unwrap();
        let state = index.state.read().unwrap();
        assert!(state.closing.is_some(), "committed");
        assert!(state.table.pending.is_empty());
        drop(state);
        // Nothing due: no commit.
        assert_eq!(index.try_upsert(&[refunds]).unwrap(), Applied::Done);
        index.commit_if_due().unwrap();
        assert_eq!(index.state.read().unwrap().table.pending.len(), 1);
        assert_eq!(
            names(&index.search(&query("billing")).unwrap()).len(),
            2,
            "committed and pending entries are both found"
        );
    }

    #[test]
    fn a_products_own_name_ranks_it_first() {
        let k = key(1);
        let index = index_of(&[
            entry(
                &k,
                1,
                &spec("customer-orders", "sales", "Orders placed.", &["orders"]),
            ),
            entry(
                &k,
                1,
                &spec(
                    "order-analytics",
                    "analytics",
                    "Customer orders, customer orders and more customer orders, by day.",
                    &["customer", "orders"],
                ),
            ),
            entry(
                &k,
                1,
                &spec("customers", "crm", "Every customer we know.", &[]),
            ),
            entry(
                &k,
                1,
                &spec(
                    "churn",
                    "crm",
                    "Customers who left; customers, customers.",
                    &[],
                ),
            ),
        ]);
        for name in ["customer-orders", "customers", "order-analytics", "churn"] {
            let found = index.search(&query(name)).unwrap();
            assert_eq!(
                found.hits[0].name,
                name,
                "query {name:?}: {:?}",
                names(&found)
            );
            assert!(found.hits[0].score > 0.0);
        }
        // Upper case and spaces around a name still find it first.
        let found = index.search(&query("  Customer-Orders ")).unwrap();
        assert_eq!(found.hits[0].name, "customer-orders");
        // A name word beats the same word in a description.
        let found = index.search(&query("churn")).unwrap();
        assert_eq!(names(&found), ["churn"]);
    }

    #[test]
    fn every_query_word_must_match_in_some_field_and_words_are_stemmed() {
        let k = key(1);
        let mut eu = spec(
            "invoices",
            "billing",
            "Invoices sent to customers.",
            &["eu"],
        );
        eu.fields = vec![("vat_number".into(), false, "tax id of the buyer".into())];
        let index = index_of(&[
            entry(&k, 1, &eu),
            entry(
                &k,
                1,
                &spec("payments", "billing", "Payments by customer.", &["us"]),
            ),
        ]);
        // "customer" in the description, "eu" a tag, "vat" a field name, "buyer" a field
        // description, "billing" the domain, "example" the owner.
        assert_eq!(
            names(&index.search(&query("customer eu")).unwrap()),
            ["invoices"]
        );
        assert_eq!(
            names(&index.search(&query("vat buyer")).unwrap()),
            ["invoices"]
        );
        assert_eq!(
            index
                .search(&query("customers billing example"))
                .unwrap()
                .total,
            2
        );
        assert_eq!(index.search(&query("payment")).unwrap().total, 1);
        assert_eq!(index.search(&query("customer nowhere")).unwrap().total, 0);
        // Stop words alone match nothing rather than everything.
        assert_eq!(index.search(&query("the of")).unwrap().total, 0);
    }

    fn faceted_catalog() -> Vec<VerifiedCatalogEntry> {
        let (a, b) = (key(1), key(2));
        let mut specs = [
            spec("orders", "sales", "Sales orders data.", &["orders", "gold"]),
            spec("leads", "sales", "Sales leads data.", &["crm"]),
            spec(
                "invoices",
                "billing",
                "Invoices data.",
                &["gold", "finance"],
            ),
            spec("ledger", "billing", "General ledger data.", &["finance"]),
            spec(
                "shipments",
                "logistics",
                "Parcel shipments data.",
                &["gold"],
            ),
        ];
        specs[0]
            .fields
            .push(("email".into(), true, "buyer email".into()));
        specs[2]
            .fields
            .push(("iban".into(), true, "bank account".into()));
        specs[1].version = "2.1.0".into();
        specs[3].version = "2.0.0-beta.1".into();
        specs[4].version = "0.3.1".into();
        specs[4].owner = "ops@example.com".into();
        specs
            .iter()
            .enumerate()
            .map(|(i, s)| entry(if i % 2 == 0 { &a } else { &b }, 1, s))
            .collect()
    }

    #[test]
    fn filters_narrow_and_facets_count_the_matches() {
        let index = index_of(&faceted_catalog());
        let all = index.search(&query("data")).unwrap();
        assert_eq!(all.total, 5);
        assert_eq!(
            facet(&all.facets.domain),
            [("billing", 2), ("sales", 2), ("logistics", 1)]
        );
        assert_eq!(
            facet(&all.facets.tag),
            [("gold", 3), ("finance", 2), ("crm", 1), ("orders", 1)]
        );
        assert_eq!(facet(&all.facets.pii), [("false", 3), ("true", 2)]);
        assert_eq!(facet(&all.facets.version), [("1", 2), ("2", 2), ("0", 1)]);
        assert_eq!(
            facet(&all.facets.owner),
            [
                ("billing-team@example.com", 2),
                ("sales-team@example.com", 2),
                ("ops@example.com", 1)
            ]
        );

        let with = |f: &dyn Fn(&mut SearchRequest)| {
            let mut r = query("data");
            f(&mut r);
            let found = index.search(&r).unwrap();
            let mut n: Vec<String> = found.hits.iter().map(|h| h.name.clone()).collect();
            n.sort();
            assert_eq!(found.total, n.len());
            (n, found.facets)
        };
        let (n, facets) = with(&|r| r.domain = Some("billing".into()));
        assert_eq!(n, ["invoices", "ledger"]);
        assert_eq!(facet(&facets.domain), [("billing", 2)]);
        assert_eq!(facet(&facets.tag), [("finance", 2), ("gold", 1)]);
        assert_eq!(
            with(&|r| r.tag = Some("gold".into())).0,
            ["invoices", "orders", "shipments"]
        );
        assert_eq!(with(&|r| r.pii = Some(true)).0, ["invoices", "orders"]);
        assert_eq!(
            with(&|r| r.pii = Some(false)).0,
            ["leads", "ledger", "shipments"]
        );
        assert_eq!(
            with(&|r| r.owner = Some("ops@example.com".into())).0,
            ["shipments"]
        );
        // Major versions as the facet shows them (pre-releases included), exact versions, and
        // semver requirements (which leave pre-releases out, as semver says).
        assert_eq!(
            with(&|r| r.version = Some("2".into())).0,
            ["leads", "ledger"]
        );
        assert_eq!(with(&|r| r.version = Some("2.1.0".into())).0, ["leads"]);
        assert_eq!(
            with(&|r| r.version = Some("^1".into())).0,
            ["invoices", "orders"]
        );
        assert_eq!(
            with(&|r| r.version = Some(">=1".into())).0,
            ["invoices", "leads", "orders"]
        );
        assert_eq!(with(&|r| r.version = Some("<1".into())).0, ["shipments"]);
        // Filters combine.
        let (n, facets) = with(&|r| {
            r.tag = Some("gold".into());
            r.pii = Some(true);
            r.domain = Some("sales".into());
        });
        assert_eq!(n, ["orders"]);
        assert_eq!(facet(&facets.pii), [("true", 1)]);
        // A value no product has matches nothing.
        assert_eq!(
            with(&|r| r.domain = Some("Sales".into())).0,
            Vec::<String>::new()
        );
        assert_eq!(
            with(&|r| r.tag = Some("nope".into())).0,
            Vec::<String>::new()
        );
    }

    #[test]
    fn an_update_replaces_the_product_and_a_removal_removes_it() {
        // Committed at every upsert, and never.
        for pending_max in [1, PENDING_MAX] {
            let mut index = SearchIndex::new().unwrap();
            index.pending_max = pending_max;
            update_and_remove(&index);
        }
    }

    fn update_and_remove(index: &SearchIndex) {
        let k = key(1);
        let first = entry(&k, 1, &spec("orders", "sales", "Alpha orders.", &["alpha"]));
        let second = entry(&k, 2, &spec("orders", "sales", "Beta orders.", &["beta"]));
        index.upsert(&first).unwrap();
        assert_eq!(index.search(&query("alpha")).unwrap().total, 1);
        index.upsert(&second).unwrap();
        assert_eq!(index.len(), 1);
        assert_eq!(index.search(&query("alpha")).unwrap().total, 0);
        let found = index.search(&query("beta")).unwrap();
        assert_eq!(found.total, 1);
        assert_eq!(found.hits[0].revision, 2);
        assert_eq!(facet(&found.facets.tag), [("beta", 1)]);
        // An older revision arriving late changes nothing.
        index.upsert(&first).unwrap();
        assert_eq!(index.search(&query("alpha")).unwrap().total, 0);
        assert_eq!(index.search(&query("beta")).unwrap().hits[0].revision, 2);

        index.remove(second.product()).unwrap();
        assert_eq!(index.len(), 0);
        assert!(index.is_empty());
        assert_eq!(
            index.search(&query("beta")).unwrap(),
            SearchResponse::default()
        );
        assert_eq!(index.search(&query("")).unwrap(), SearchResponse::default());
        // Removing what is not there is fine; the product can come back.
        index.remove(second.product()).unwrap();
        index.upsert(&second).unwrap();
        assert_eq!(index.search(&query("beta")).unwrap().total, 1);
    }

    #[test]
    fn the_index_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<SearchIndex>();
    }

    #[test]
    fn a_hit_says_what_the_product_is_and_who_owns_it() {
        let k = key(7);
        let mut s = spec("orders", "sales", "Sales orders.", &["gold"]);
        s.fields.push(("email".into(), true, String::new()));
        s.version = "1.4.2".into();
        let e = entry(&k, 3, &s);
        let index = index_of(std::slice::from_ref(&e));
        let hit = index.search(&query("orders")).unwrap().hits.remove(0);
        assert_eq!(hit.product, e.product().to_string());
        assert_eq!(hit.name, "orders");
        assert_eq!(hit.owner_key, k.public().to_string());
        assert_eq!(hit.owner, "sales-team@example.com");
        assert_eq!(hit.domain, "sales");
        assert_eq!(hit.version, "1.4.2");
        assert_eq!(hit.description, "Sales orders.");
        assert_eq!(hit.tags, ["gold"]);
        assert!(hit.has_pii);
        assert_eq!(hit.revision, 3);
        assert_eq!(hit.updated_micros, e.entry().timestamp_micros);
        assert!(hit.holders.is_empty());
    }

    #[test]
    fn queries_are_parsed_leniently_and_bad_requests_say_why() {
        let k = key(1);
        let index = index_of(&[entry(
            &k,
            1,
            &spec("profiles", "crm", "Customer data for the EU market.", &[]),
        )]);
        let found = index.search(&query("customer's data (eu")).unwrap();
        assert_eq!(names(&found), ["profiles"]);
        for q in [
            "\"unbalanced",
            "a AND (b OR",
            "title:foo^2 ~3 *",
            ")(][}{:^~*?!-+&|/\\",
            "ÄÖÜ ß 中文 😀",
            "customer\u{0}data",
        ] {
            index.search(&query(q)).unwrap();
        }
        let long = "x".repeat(QUERY_BYTES_MAX + 1);
        assert!(matches!(
            index.search(&query(&long)),
            Err(SearchError::QueryTooLong { .. })
        ));
        let bad_version = SearchRequest {
            version: Some("one point two".into()),
            ..query("data")
        };
        let error = index.search(&bad_version).unwrap_err();
        assert!(matches!(error, SearchError::BadVersion { .. }));
        assert!(error.to_string().contains("one point two"), "{error}");
        let deep = SearchRequest {
            offset: OFFSET_MAX + 1,
            ..query("")
        };
        assert!(matches!(
            index.search(&deep),
            Err(SearchError::OffsetTooLarge { .. })
        ));
    }

    #[test]
    fn an_empty_query_with_filters_browses_in_product_order() {
        let index = index_of(&faceted_catalog());
        let everything = index.search(&query("  ")).unwrap();
        assert_eq!(everything.total, 5);
        let ids: Vec<&str> = everything.hits.iter().map(|h| h.product.as_str()).collect();
        let mut sorted_ids = ids.clone();
        sorted_ids.sort_unstable();
        assert_eq!(ids, sorted_ids);
        assert!(everything.hits.iter().all(|h| h.score == 0.0));

        let gold = SearchRequest {
            tag: Some("gold".into()),
            ..query("")
        };
        let found = index.search(&gold).unwrap();
        assert_eq!(names(&found), ["invoices", "orders", "shipments"]);
        assert_eq!(
            facet(&found.facets.tag),
            [("gold", 3), ("finance", 1), ("orders", 1)]
        );
        // Paging walks the same order; facets and total still describe every match.
        let page = |offset, limit| {
            index
                .search(&SearchRequest {
                    offset,
                    limit,
                    ..gold.clone()
                })
                .unwrap()
        };
        assert_eq!(names(&page(1, 1)), ["orders"]);
        assert_eq!(page(1, 1).total, 3);
        assert_eq!(page(1, 1).facets, found.facets);
        assert_eq!(names(&page(2, 5)), ["shipments"]);
        assert!(page(3, 5).hits.is_empty());
    }

    #[test]
    fn paging_a_ranked_query_is_stable() {
        let k = key(3);
        let entries: Vec<_> = (0..30)
            .map(|i| {
                let description = format!("orders {}", "orders ".repeat(i % 4));
                entry(
                    &k,
                    1,
                    &spec(&format!("p{i:02}"), "sales", &description, &[]),
                )
            })
            .collect();
        let index = index_of(&entries);
        let all = index
            .search(&SearchRequest {
                limit: LIMIT_MAX,
                ..query("orders")
            })
            .unwrap();
        assert_eq!(all.total, 30);
        for pair in all.hits.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(a.score > b.score || (a.score == b.score && a.product < b.product));
        }
        let mut paged = Vec::new();
        for offset in (0..30).step_by(7) {
            let page = index
                .search(&SearchRequest {
                    offset,
                    limit: 7,
                    ..query("orders")
                })
                .unwrap();
            paged.extend(page.hits);
        }
        assert_eq!(paged, all.hits);
    }

    /// A catalog of `n` products with words drawn from small vocabularies, so that scores tie
    /// and statistics matter.
    fn random_specs(rng: &mut StdRng, n: usize, prefix: &str) -> Vec<Spec> {
        const WORDS: &[&str] = &[
            "customer", "order", "invoice", "payment", "shipment", "stock", "price", "account",
            "ledger", "refund", "churn", "lead", "campaign", "click", "session", "device",
        ];
        const DOMAINS: &[&str] = &["sales", "billing", "logistics", "marketing", "crm"];
        const TAGS: &[&str] = &["gold", "silver", "pii", "eu", "us", "daily", "raw"];
        let pick = |rng: &mut StdRng, from: &[&str], k: usize| {
            let mut words: Vec<String> = (0..k)
                .map(|_| from[rng.random_range(0..from.len())].to_owned())
                .collect();
            words.dedup();
            words
        };
        (0..n)
            .map(|i| {
                let domain = DOMAINS[rng.random_range(0..DOMAINS.len())];
                let words = rng.random_range(2..12);
                let tag_count = rng.random_range(0..3);
                let mut tags = pick(rng, TAGS, tag_count);
                tags.sort();
                tags.dedup();
                let fields = (0..rng.random_range(1..5))
                    .map(|f| {
                        let word = WORDS[rng.random_range(0..WORDS.len())];
                        (
                            format!("{word}_{f}"),
                            rng.random_bool(0.2),
                            format!("the {word}"),
                        )
                    })
                    .collect();
                Spec {
                    name: format!("{prefix}{}-{i}", WORDS[rng.random_range(0..WORDS.len())]),
                    domain: domain.into(),
                    owner: format!("team-{}@example.com", rng.random_range(0..4)),
                    description: pick(rng, WORDS, words).join(" "),
                    tags,
                    version: format!("{}.{}.0", rng.random_range(0..3), rng.random_range(0..3)),
                    fields,
                }
            })
            .collect()
    }

    fn probe_requests() -> Vec<SearchRequest> {
        let mut requests: Vec<SearchRequest> = [
            "customer",
            "order",
            "customer order",
            "invoice payment ledger",
            "gold",
            "sales",
            "team",
            "churn-3",
            "the",
            "stock price",
            "twin",
            "twin customer",
        ]
        .iter()
        .map(|q| SearchRequest {
            limit: LIMIT_MAX,
            ..query(q)
        })
        .collect();
        requests.push(SearchRequest {
            domain: Some("sales".into()),
            limit: 7,
            offset: 3,
            ..query("order")
        });
        requests.push(SearchRequest {
            tag: Some("eu".into()),
            pii: Some(false),
            ..query("")
        });
        requests.push(SearchRequest {
            version: Some("^1".into()),
            limit: LIMIT_MAX,
            ..query("customer")
        });
        requests
    }

    fn pending(index: &SearchIndex) -> usize {
        index.state.read().unwrap().table.pending.len()
    }

    #[test]
    fn writer_changes_stay_bounded_when_one_product_changes_again_and_again() {
        let index = SearchIndex::new().unwrap();
        let key = key(1);
        let s = spec("orders", "sales", "every order", &["gold"]);
        let queued = |index: &SearchIndex| index.state.read().unwrap().queued.len();
        // The pending set holds one product throughout, so only the queue's bound commits.
        for revision in 1..=(QUEUED_MAX as u64) {
            index.upsert(&entry(&key, revision, &s)).unwrap();
            assert!(queued(&index) < QUEUED_MAX, "revision {revision}");
        }
        assert_eq!(pending(&index), 1);
        assert!(
            deleted_docs(&index) > 0,
            "the queue was never handed to the writer"
        );
        assert_eq!(index.search(&query("order")).unwrap().total, 1);
    }

    fn deleted_docs(index: &SearchIndex) -> u32 {
        let state = index.state.read().unwrap();
        let searcher = state.reader.searcher();
        searcher
            .segment_readers()
            .iter()
            .map(|s| s.num_deleted_docs())
            .sum()
    }

    #[test]
    fn two_indexes_with_the_same_entries_give_the_same_answers_whatever_their_history() {
        for seed in [1u64, 2, 3] {
            let mut rng = StdRng::seed_from_u64(seed);
            let keys = [key(1), key(2), key(3)];
            let mut specs = random_specs(&mut rng, 76, "");
            // Twins: same words, so same scores, ranked by product id alone.
            for k in 0..4 {
                let mut twin = specs[0].clone();
                twin.name = format!("twin-{k}");
                twin.description = "customer twin".into();
                specs.push(twin);
            }
            let owner = |i: usize| &keys[i % keys.len()];
            let last: Vec<_> = specs
                .iter()
                .enumerate()
                .map(|(i, s)| entry(owner(i), 5, s))
                .collect();

            // A: the final catalog, in order, in one batch.
            let a = index_of(&last);

            // B: another order, one upsert at a time, with older revisions of other content
            // first, products that come and go, and searches in between, so that its segments
            // hold deleted documents that tantivy's own statistics would count.
            // Every later query word looked up by seeking in B.
            let mut b = SearchIndex::new().unwrap();
            b.pending_max = 7;
            b.seek_cost = 0;
            let earlier = random_specs(&mut rng, 80, "");
            let transient = random_specs(&mut rng, 40, "gone-");
            let mut gone = Vec::new();
            let mut order: Vec<usize> = (0..specs.len()).collect();
            order.shuffle(&mut rng);
            for (n, &i) in order.iter().enumerate() {
                let mut old = earlier[i].clone();
                old.name = specs[i].name.clone();
                b.upsert(&entry(owner(i), 1 + (n as u64 % 3), &old))
                    .unwrap();
                let t = entry(owner(n), 1, &transient[n % transient.len()]);
                b.upsert(&t).unwrap();
                gone.push(t.product().clone());
                if n % 9 == 0 {
                    b.search(&query("customer")).unwrap();
                }
            }
            order.shuffle(&mut rng);
            for (n, &i) in order.iter().enumerate() {
                b.upsert(&last[i]).unwrap();
                if n % 2 == 0 {
                    b.remove(&gone[n]).unwrap();
                }
                if n % 11 == 0 {
                    b.search(&query("order")).unwrap();
                }
            }
            for product in &gone {
                b.remove(product).unwrap();
            }
            b.search(&query("")).unwrap();

            // C: one upsert at a time, none committed yet: every search scans them all.
            let c = SearchIndex::new().unwrap();
            for e in last.iter().rev() {
                c.upsert(e).unwrap();
            }
            // D: as A, but every query word's postings walked.
            let mut d = SearchIndex::new().unwrap();
            d.seek_cost = usize::MAX;
            d.upsert_many(&last).unwrap();

            assert_eq!(a.len(), b.len());
            assert_eq!(a.len(), c.len());
            assert_eq!(deleted_docs(&a), 0);
            assert!(
                deleted_docs(&b) > 0,
                "seed {seed}: the history left no deleted documents"
            );
            assert!(pending(&b) > 0, "seed {seed}: b committed everything");
            assert_eq!(pending(&c), c.len());
            for request in probe_requests() {
                let x = a.search(&request).unwrap();
                assert_eq!(x, b.search(&request).unwrap(), "seed {seed}: {request:?}");
                assert_eq!(x, c.search(&request).unwrap(), "seed {seed}: {request:?}");
                assert_eq!(x, d.search(&request).unwrap(), "seed {seed}: {request:?}");
            }
            let twins = a.search(&query("twin")).unwrap();
            assert_eq!(twins.total, 4);
            assert!(twins.hits.windows(2).all(|w| w[0].score == w[1].score));
        }
    }
}
