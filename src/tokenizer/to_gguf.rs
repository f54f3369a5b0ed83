//! GGUF tokenizer metadata from a Hugging Face tokenizer: the inverse of [`super::gguf`].
//!
//! # What
//!
//! [`to_gguf`] turns an [`HfTokenizer`] (a `tokenizer.json` with the `tokenizer_config.json`,
//! `config.json` and chat-template files beside it) into the `tokenizer.*` key/values that
//! llama.cpp's `convert_hf_to_gguf.py` writes for the same folder, as a [`TokenizerMetadata`]
//! (ordered `(key, GgufValue)` pairs for the GGUF writer). The reference is the converter vendored
//! in llama-cpp-python 0.3.36 (`conversion/base.py` and gguf-py's `vocab.py`).
//!
//! # How
//!
//! 1. **Model.** A BPE `tokenizer.json` with `byte_fallback` and a `Sequence` decoder is a
//!    SentencePiece-style vocabulary (`"llama"`, the converter's `_set_vocab_llama_hf`); any other
//!    BPE is byte-level (`"gpt2"`, `_set_vocab_gpt2`). WordPiece, Unigram and the rest are
//!    [`ToGgufError::Unsupported`].
//! 2. **Tokens and types** (`get_vocab_base`). Ids `0..vocab_size` (`config.json`'s `vocab_size`,
//!    else the vocabulary's size); an id with no token becomes `[PAD{id}]` of type unused (5). An
//!    added token that is `special`, or looks special (`<|...|>`, `<pad>`, ...), is control (3);
//!    another added token is user-defined (4), with `▁` written as a space; an added token that is
//!    not `normalized` is first encoded and decoded, as the converter does. Everything else is
//!    normal (1).
//! 3. **Pre-tokenizer** (`get_vocab_base_pre`). The converter's fixed text [`CHKTXT`] is encoded
//!    (with special tokens, as `AutoTokenizer.encode` does), Python's `str()` of the id list is
//!    hashed with SHA-256 and looked up in the converter's table ([`PRE_BY_HASH`]). An unknown hash
//!    is [`ToGgufError::UnknownPreTokenizer`] (naming the hash) unless the caller passes the name.
//! 4. **Special vocabulary** (gguf-py's `SpecialVocab`). Merges from `tokenizer.json` (pairs with a
//!    space written as `Ġ`, as gguf-py does); `add_bos`/`add_eos`/`add_sep` from the post-processor
//!    (`ByteLevel`, `RobertaProcessing`, `TemplateProcessing`) and then `tokenizer_config.json`;
//!    special-token ids from `tokenizer_config.json`'s `*_token` (looked up among the added tokens)
//!    and then `config.json`'s `*_token_id`; the chat template from `tokenizer_config.json`, else
//!    `chat_template.jinja` / `chat_template.json`; normalizer lowercasing / accent stripping.
//! 5. **Architecture extras.** For `LlamaForCausalLM` (what `pipe` trains) the converter's
//!    `LlamaModel.set_vocab` also writes `add_space_prefix` from `tokenizer_config.json`'s
//!    `add_prefix_space`, and forces `add_bos_token = false` for 49152-token vocabularies
//!    (SmolLM/Granite); both are reproduced. Other architectures get no extras.
//!
//! Keys are in the order the converter writes them; a key written twice keeps its first position
//! and its last value, as gguf-py's writer does. [`to_gguf_with`] takes [`ExportOptions`].
//!
//! # Checked against the converter
//!
//! `scripts/gguf_tokenizer_reference.py` runs the converter's own methods (taken from its source,
//! no torch needed) on a folder; the tests compare every key, its position, type and value with
//! that output for the fixtures under `tests/data/to-gguf/` (made by
//! `scripts/make_to_gguf_fixtures.py`) and for the `merge` node's SmolLM2 folder.
//!
//! # Limits
//!
//! * Only the `tokenizer.json` route: a `tokenizer.model` (SentencePiece protobuf), tiktoken
//!   vocabularies (`_set_vocab_qwen` for the original Qwen) and Mistral's `tekken.json` are not read.
//! * **Deliberate difference: `"llama"` scores.** The converter writes its placeholder `-1000.0`
//!   for every token (`LlamaHfVocab.get_token_score`) and no merges. llama.cpp's SentencePiece
//!   tokenizer merges the adjacent pair with the highest score, the leftmost on ties, so with
//!   equal scores it merges by position, not by rank, and tokenizes differently from Hugging Face
//!   wherever merge order matters. Here a token made by merge `r` scores `-r` (others `0.0`), which
//!   makes llama.cpp merge in rank order: on tests/data/to-gguf/spmbpe, random texts
//!   (scripts/spm_scores_check.py) differ from Hugging Face in 4 of 300 with the converter's scores
//!   and 0 of 300 with these. [`ExportOptions::with_converter_scores`] restores the converter's.
//! * `AutoTokenizer` is emulated on `tokenizer.json` alone: transformers' own rewriting of the
//!   post-processor from `add_bos_token` (Llama, Gemma tokenizer classes) is not done, so a
//!   `tokenizer.json` whose post-processor disagrees with its config hashes the way the file says.
//! * `all_special_tokens` (used by the `"llama"` route) is taken from `tokenizer_config.json`
//!   and `special_tokens_map.json` as transformers 4.x does.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use super::gguf::keys;
use crate::gguf::GgufValue;

/// GGUF keys written here and not read by [`super::gguf::from_gguf`].
pub mod extra_keys {
    /// Token scores (SentencePiece vocabularies).
    pub const SCORES: &str = "tokenizer.ggml.scores";
    /// End-of-turn token id.
    pub const EOT_ID: &str = "tokenizer.ggml.eot_token_id";
    /// End-of-message token id.
    pub const EOM_ID: &str = "tokenizer.ggml.eom_token_id";
    /// Separator token id (llama.cpp's spelling).
    pub const SEP_ID: &str = "tokenizer.ggml.seperator_token_id";
    /// Mask token id.
    pub const MASK_ID: &str = "tokenizer.ggml.mask_token_id";
    /// Whether to add the separator token.
    pub const ADD_SEP: &str = "tokenizer.ggml.add_sep_token";
    /// Whether to prepend a space (SentencePiece's dummy prefix).
    pub const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
    /// Normalizer lowercases.
    pub const NORMALIZER_LOWERCASE: &str = "tokenizer.ggml.normalizer.lowercase";
    /// Normalizer strips accents.
    pub const NORMALIZER_STRIP_ACCENTS: &str = "tokenizer.ggml.normalizer.strip_accents";
    /// Names of the extra chat templates (`tokenizer.chat_template.{name}`).
    pub const CHAT_TEMPLATES: &str = "tokenizer.chat_templates";
}

/// The text `convert_hf_to_gguf.py` encodes to fingerprint a BPE pre-tokenizer (`chktxt`).
pub const CHKTXT: &str = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\u{1f680} (normal) \u{1f636}\u{200d}\u{1f32b}\u{fe0f} (multiple emojis concatenated) \u{2705} \u{1f999}\u{1f999} 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 \u{1780}\u{17b6}\u{1793}\u{17cb}\u{178f}\u{17c2}\u{1796}\u{17b7}\u{179f}\u{17c1}\u{179f}\u{17a2}\u{17b6}\u{1785}\u{1f601} ?\u{6211}\u{60f3}\u{5728}apple\u{5de5}\u{4f5c}1314151\u{5929}\u{ff5e} ------======= \u{43d}\u{435}\u{449}\u{43e} \u{43d}\u{430} \u{411}\u{44a}\u{43b}\u{433}\u{430}\u{440}\u{441}\u{43a}\u{438} ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL";

/// `(chkhsh, tokenizer.ggml.pre)` from `get_vocab_base_pre`, in the converter's order.
///
/// The converter tests every entry with `if`, not `elif`, so for a hash listed twice the last
/// name wins (`mpt`/`olmo`, `bert-bge`/`jina-v2-en`); [`pre_for_hash`] does the same.
pub const PRE_BY_HASH: &[(&str, &str)] = &[
    ("b6e8e1518dc4305be2fe39c313ed643381c4da5db34a98f6a04c093f8afbe99b", "chatglm-bpe"),
    ("81d72c7348a9f0ebe86f23298d37debe0a5e71149e29bd283904c02262b27516", "chatglm-bpe"),
    ("a1336059768a55c99a734006ffb02203cd450fed003e9a71886c88acf24fdbc2", "glm4"),
    ("9ca2dd618e8afaf09731a7cf6e2105b373ba6a1821559f258b272fe83e6eb902", "glm4"),
    ("cdf5f35325780597efd76153d4d1c16778f766173908894c04afc20108536267", "glm4"),
    ("1431a23e583c97432bc230bff598d103ddb5a1f89960c8f1d1051aaa944d0b35", "minerva-7b"),
    ("7e57df22b1fe23a7b1e1c7f3dc4e3f96d43a4eb0836d0c6bdc3436d7b2f1c664", "hunyuan"),
    ("bba3b3366b646dbdded5dbc42d59598b849371afc42f7beafa914afaa5b70aa6", "hunyuan-dense"),
    ("e6ddf9c6686791c12d698d34c31ab9be1fea9af5a3d9a6909783ab382198ae1c", "hy_v4"),
    ("a6b57017d60e6edb4d88ecc2845188e0eb333a70357e45dcc9b53964a73bbae6", "falcon-h1"),
    ("60476e1243776c4fb1b993dbd7a5f15ac22f83c80afdf425fa5ae01c8d44ef86", "falcon-h1"),
    ("3eda48b4c4dc7de733d1a8b3e3b4a85243dbbf704da2ee9d42c6beced8897896", "falcon-h1"),
    ("48f8e02c0359c0bbdd82f26909171fac1c18a457bb47573ed1fe3bbb2c1cfd4b", "falcon-h1"),
    ("81212dc7cdb7e0c1074ca62c5aeab0d43c9f52b8a737be7b12a777c953027890", "kimi-k2"),
    ("d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c", "qwen2"),
    ("1444df51289cfa8063b96f0e62b1125440111bc79a52003ea14b6eac7016fd5f", "qwen35"),
    ("66b8d4e19ab16c3bfd89bce5d785fb7e0155e8648708a1f42077cb9fe002c273", "grok-2"),
    ("b3d1dd861f1d4c5c0d2569ce36baf3f90fe8a102db3de50dd71ff860d91be3df", "jina-v2-de"),
    ("0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4", "gpt-2"),
    ("9e454714343b69b99b71795c1d27a68c2a1d15dab111f4d353109f966af29da7", "lfm2"),
    ("846deafc5b0fa786186fa4ae6c7b49903cf2f1d1895bdb80b9120d60be135252", "gemma4"),
    ("0a766d034107bc736a3f2dc4968fd62e54a3570f1454443e0c5a4cc6bd7941ed", "spark2_5"),
    ("0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5", "llama-bpe"),
    ("049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754", "deepseek-llm"),
    ("347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821", "deepseek-coder"),
    ("8aeee3860c56296a157a1fe2fad249ec40aa59b1bb5709f4ade11c4e6fe652ed", "falcon"),
    ("0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f", "bert-bge"),
    ("9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e", "falcon3"),
    ("8e62295832751ca1e8f92f2226f403dea30dc5165e448b5bfa05af5340c64ec7", "bert-bge-large"),
    ("b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166", "mpt"),
    ("35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34", "starcoder"),
    ("3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454", "gpt-2"),
    ("32d85c31273f8019248f2559fed492d929ea28b17e51d81d3bb36fff23ca72b3", "stablelm2"),
    ("6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff", "refact"),
    ("9c2227e4dd922002fb81bde4fc02b0483ca4f12911410dee2255e4987644e3f8", "command-r"),
    ("d772b220ace2baec124bed8cfafce0ead7d6c38a4b65ef11261cf9d5d62246d1", "tiny_aya"),
    ("52df12b4c8d4176e7481aab4b6e8454d1fd0a210a04a574f6d4e067d10e23c3e", "cohere2moe"),
    ("e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea", "qwen2"),
    ("b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166", "olmo"),
    ("a8594e3edff7c29c003940395316294b2c623e09894deebbc65f33f1515df79e", "dbrx"),
    ("c7699093ba4255a91e702aa38a596aa81669f3525dae06c2953267dde580f448", "jina-v1-en"),
    ("0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f", "jina-v2-en"),
    ("171aeeedd6fb548d418a7461d053f11b6f1f1fc9b387bd66640d28a4b9f5c643", "jina-v2-es"),
    ("27949a2493fc4a9f53f5b9b029c82689cfbe5d3a1929bb25e043089e28466de6", "jina-v2-de"),
    ("a023e9fdc5a11f034d3ef515b92350e56fb2af1f66c6b6811a4444ea9bf8763d", "jina-v5-nano"),
    ("c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d", "smaug-bpe"),
    ("c7ea5862a53e4272c035c8238367063e2b270d51faa48c0f09e9d5b54746c360", "poro-chat"),
    ("7967bfa498ade6b757b064f31e964dddbb80f8f9a4d68d4ba7998fcf281c531a", "jina-v2-code"),
    ("7fc505bd3104ca1083b150b17d088b59534ede9bde81f0dd2090967d7fe52cee", "viking"),
    ("b53802fb28e26d645c3a310b34bfe07da813026ec7c7716883404d5e0f8b1901", "jais"),
    ("bc5108ee1eb6a3d600cadd065f63190fbd0554dbc9e4bbd6a0d977970afc8d2a", "jais-2"),
    ("7b3e7548e4308f52a76e8229e4e6cc831195d0d1df43aed21ac6c93da05fec5f", "codeshell"),
    ("63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e", "tekken"),
    ("855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249", "smollm"),
    ("3c30d3ad1d6b64202cd222813e7736c2db6e1bd6d67197090fc1211fbc612ae7", "bloom"),
    ("bc01ce58980e1db43859146dc51b1758b3b88729b217a74792e9f8d43e479d21", "gpt3-finnish"),
    ("4e2b24cc4770243d65a2c9ec19770a72f08cffc161adbb73fcbb6b7dd45a0aae", "exaone"),
    ("fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085", "phi-2"),
    ("60824e3c0d9401f89943cbb2fff727f0e2d4c545ba4df2d6e4f09a6db0f5b450", "chameleon"),
    ("8b5a93ed704057481f240da0be7e7dca721d7f8f4755263b6807227a2cbeae65", "roberta-bpe"),
    ("ad851be1dba641f2e3711822f816db2c265f788b37c63b4e1aeacb9ee92de8eb", "gigachat"),
    ("d4c8f286ea6b520b3d495c4455483cfa2302c0cfcd4be05d781b6a8a0a7cdaf1", "megrez"),
    ("877081d19cf6996e2c4ff0e1236341e9b7bde288f5311a56a937f0afbbb3aeb5", "deepseek-v3"),
    ("b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5", "deepseek-r1-qwen"),
    ("ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e", "gpt-4o"),
    ("7dec86086fcc38b66b7bc1575a160ae21cf705be7718b9d5598190d7c12db76f", "superbpe"),
    ("1994ffd01900cfb37395608534236ecd63f2bd5995d6cb1004dda1af50240f15", "trillion"),
    ("96a5f08be6259352137b512d4157e333e21df7edd3fcd152990608735a65b224", "bailingmoe"),
    ("d353350c764d8c3b39c763113960e4fb4919bea5fbf208a0e3b22e8469dc7406", "llama4"),
    ("0e9433cbbb161f89e264eb32e8e64bfe69e834973ffca5d41d3948a604a3e2a3", "pixtral"),
    ("d5f1dd6f980fec569fb218a81a7658ac45fc56b38c5a0adeb1c232fbe04ef5ec", "seed-coder"),
    ("b0a6b1c0bd5998ebd9df08611efde34a4ff03faed45ae09c43e6b31ebd4b94cf", "a.x-4.0"),
    ("f6791d196f87ce6b56a7d234be618e0d58f8cda3549416635b2bebcd22cd95c4", "midm-2.0"),
    ("169bf0296a13c4d9b7672313f749eb36501d931022de052aad6e36f2bf34dd51", "lfm2"),
    ("2085e1638f6c377a0aa4ead21b27bb4cb941bf800df86ed391011769c1758dfb", "exaone4"),
    ("a1e163ecab2e718a4c829d1148b6e86824ec36163bb71941c3dca9cd5ac25756", "mellum"),
    ("a0b64b4385f123663873756336c085744376d015ff328bb1d901598f63c44152", "modern-bert"),
    ("49fc0303c9e0d2c2c565c510f64b2d9b271276acdcdadff733249eda9f7d59df", "afmoe"),
    ("9b1be57e70d20d9501b2b3186e792d81181ae36ada3903c26f9fea418cf87206", "bailingmoe2"),
    ("53e325976a6e142379c19b09afcae354f2f496f147afa8f9e189a33fe4e3024e", "granite-docling"),
    ("f4f37b6c8eb9ea29b3eac6bb8c8487c5ab7885f8d8022e67edc1c68ce8403e95", "minimax-m2"),
    ("4a2e2abae11ca2b86d570fc5b44be4d5eb5e72cc8f22dd136a94b37da83ab665", "kormo"),
    ("9d70134b369a70e5735009b6de918f7581b5211f7c074d1f89f753aea8248af1", "youtu"),
    ("16389f0a1f51ee53e562ffd51c371dc508639ab0e4261502071836e50e223e91", "solar-open"),
    ("6c81ce329e0802883b22eabab0d3fa48357337ef1ecb45443828bf1f6254833f", "exaone-moe"),
    ("d30d75d9059f1aa2c19359de71047b3ae408c70875e8a3ccf8c5fba56c9d8af4", "qwen35"),
    ("b4b8ca1f9769494fbd956ebc4c249de6131fb277a4a3345a7a92c7dd7a55808d", "joyai-llm"),
    ("e4d54df1ebc1f2b91acd986c5b51aa50837d5faf7c7398e73c1f9e9ee5d19869", "kanana2"),
    ("862f827721df956049dff5ca81a57f29e575280bc622e290d3bf4e35eca29015", "f2llmv2"),
    ("62f6fb0a6fd5098caeabb19b07a5c1099cafc8b9c40eab6ea89ece4ec02fbc57", "sarvam-moe"),
    ("f728162c1315c26e40249849799b4ba3fe584c32084b4795b03eb295e63cb5af", "talkie"),
    ("36f3066e97b7f3994b379aaacde306c1444c6ae84e81a5ae3cd2b7ed3b8c42d4", "minicpm5"),
    ("f241072145675bf8322086f115aebad05e9f869557a238bf2150a2a417d1bf60", "granite-embed-multi-97m"),
    ("789696f5946cc0fc59371f39f6097cafed196b3acded6140432f26bbb1ae1669", "granite-embed-multi-311m"),
    ("9dcf830ee9990cdbf78cc523a5f7bd9ad8f3f9890c2d3581d2785ad10f07049d", "mellum2"),
    ("972da7b59cec44d1f0a490a86c96df53859e486e481563e5dddac155013d87ac", "laguna"),
    ("653660222fb704f61cbf2b618a8ae6502b7f8b20c980f9a5de07ed78e13319cd", "ufakzeka"),
];

/// The `tokenizer.ggml.pre` name the converter gives a `chkhsh`, if it knows the hash.
pub fn pre_for_hash(chkhsh: &str) -> Option<&'static str> {
    PRE_BY_HASH.iter().rev().find(|(h, _)| *h == chkhsh).map(|(_, name)| *name)
}

/// llama.cpp token types (`enum llama_token_type`), as written in `tokenizer.ggml.token_type`.
pub mod token_type {
    /// An ordinary vocabulary entry.
    pub const NORMAL: i32 = 1;
    /// The unknown token (SentencePiece).
    pub const UNKNOWN: i32 = 2;
    /// A special token: BOS, EOS, `<|im_start|>`...
    pub const CONTROL: i32 = 3;
    /// An added token that is not special.
    pub const USER_DEFINED: i32 = 4;
    /// A placeholder id with no token (`[PAD{id}]`).
    pub const UNUSED: i32 = 5;
    /// A byte-fallback token `<0xXX>` (SentencePiece).
    pub const BYTE: i32 = 6;
}

/// Exporting a tokenizer to GGUF metadata failed. Each variant names the tokenizer's source.
#[derive(Debug, thiserror::Error)]
pub enum ToGgufError {
    /// A file could not be read.
    #[error("reading {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid JSON, or `tokenizer.json` is not a tokenizer `tokenizers` can load.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer model has no GGUF export here.
    #[error("{}: cannot export a {model} tokenizer to GGUF: {reason}", tokenizer.display())]
    Unsupported {
        /// The tokenizer's folder or file.
        tokenizer: PathBuf,
        /// `model.type` of `tokenizer.json` (`"WordPiece"`, `"Unigram"`...).
        model: String,
        /// What is supported.
        reason: &'static str,
    },
    /// The pre-tokenizer fingerprint is not in the converter's table.
    #[error(
        "{}: unknown BPE pre-tokenizer: convert_hf_to_gguf.py does not know chkhsh {hash} ({n_ids} ids for its check text); \
         set the pre-tokenizer explicitly (llama.cpp's tokenizer.ggml.pre name, e.g. \"llama-bpe\", \"qwen2\", \"smollm\", \"gpt-2\") \
         after checking that the tokenizer splits text the way that family does",
        tokenizer.display()
    )]
    UnknownPreTokenizer {
        /// The tokenizer's folder or file.
        tokenizer: PathBuf,
        /// SHA-256 of Python's `str()` of the check text's ids.
        hash: String,
        /// How many ids the check text encoded to.
        n_ids: usize,
    },
    /// An explicit pre-tokenizer name that llama.cpp does not know.
    #[error("{}: pre-tokenizer '{name}' is not one llama.cpp knows (did you mean {suggestion}?)", tokenizer.display())]
    UnknownPreName {
        /// The tokenizer's folder or file.
        tokenizer: PathBuf,
        /// The name given.
        name: String,
        /// The closest known name.
        suggestion: String,
    },
    /// The tokenizer is inconsistent with itself or its configs (ids beyond `vocab_size`...).
    #[error("{}: {reason}", tokenizer.display())]
    Inconsistent {
        /// The tokenizer's folder or file.
        tokenizer: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Encoding or decoding with the tokenizer failed.
    #[error("{}: {action} with the tokenizer failed: {error}", tokenizer.display())]
    Tokenizers {
        /// The tokenizer's folder or file.
        tokenizer: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The error from `tokenizers`.
        error: String,
    },
}

/// A Hugging Face tokenizer with the files beside it that the converter reads.
#[derive(Clone)]
pub struct HfTokenizer {
    source: PathBuf,
    files: Vec<PathBuf>,
    tokenizer: Tokenizer,
    json: Json,
    tokenizer_config: Option<Json>,
    model_config: Option<Json>,
    special_tokens_map: Option<Json>,
    /// `chat_template.jinja` (a string, or a `[{name, template}]` list with the additional
    /// templates) or `chat_template.json`'s `chat_template`: used when the config has none.
    chat_template_file: Option<Json>,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer").field("source", &self.source).finish_non_exhaustive()
    }
}

fn read_text(path: &Path) -> Result<String, ToGgufError> {
    std::fs::read_to_string(path).map_err(|source| ToGgufError::Io { path: path.to_path_buf(), source })
}

fn read_json_if_exists(path: &Path) -> Result<Option<Json>, ToGgufError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = read_text(path)?;
    serde_json::from_str(&text).map(Some).map_err(|e| ToGgufError::Invalid { path: path.to_path_buf(), message: e.to_string() })
}

impl HfTokenizer {
    /// Reads a Hugging Face model folder: `tokenizer.json` (required), and when present
    /// `tokenizer_config.json`, `config.json`, `special_tokens_map.json`, `chat_template.jinja`
    /// (with `additional_chat_templates/*.jinja`) or `chat_template.json`.
    pub fn from_dir(dir: &Path) -> Result<HfTokenizer, ToGgufError> {
        let json_path = dir.join("tokenizer.json");
        if !json_path.is_file() {
            return Err(ToGgufError::Invalid {
                path: dir.to_path_buf(),
                message: "this folder has no tokenizer.json (a GGUF export needs one)".into(),
            });
        }
        let mut t = HfTokenizer::from_json(dir, &read_text(&json_path)?)?;
        t.files.push(json_path);
        let mut optional = |name: &str| -> Result<Option<Json>, ToGgufError> {
            let path = dir.join(name);
            let json = read_json_if_exists(&path)?;
            if json.is_some() {
                t.files.push(path);
            }
            Ok(json)
        };
        let tokenizer_config = optional("tokenizer_config.json")?;
        let model_config = optional("config.json")?;
        let special_tokens_map = optional("special_tokens_map.json")?;
        (t.tokenizer_config, t.model_config, t.special_tokens_map) = (tokenizer_config, model_config, special_tokens_map);
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            t.files.push(jinja.clone());
            let default = read_text(&jinja)?;
            let mut extra: Vec<PathBuf> = match std::fs::read_dir(dir.join("additional_chat_templates")) {
                Ok(entries) => entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "jinja"))
                    .collect(),
                Err(_) => Vec::new(),
            };
            extra.sort();
            t.chat_template_file = Some(if extra.is_empty() {
                Json::String(default)
            } else {
                let mut list = vec![serde_json::json!({"name": "default", "template": default})];
                for p in extra {
                    t.files.push(p.clone());
                    let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                    list.push(serde_json::json!({"name": name, "template": read_text(&p)?}));
                }
                Json::Array(list)
            });
        } else if let Some(j) = read_json_if_exists(&dir.join("chat_template.json"))? {
            t.files.push(dir.join("chat_template.json"));
            t.chat_template_file = j.get("chat_template").cloned();
        }
        Ok(t)
    }

    /// A tokenizer from the text of a `tokenizer.json`, without configs (add them with the
    /// `with_*` methods). `source` names it in errors.
    pub fn from_json(source: impl Into<PathBuf>, tokenizer_json: &str) -> Result<HfTokenizer, ToGgufError> {
        let source = source.into();
        let invalid = |message: String| ToGgufError::Invalid { path: source.clone(), message };
        let json: Json = serde_json::from_str(tokenizer_json).map_err(|e| invalid(format!("tokenizer.json: {e}")))?;
        let tokenizer: Tokenizer = tokenizer_json.parse().map_err(|e| invalid(format!("tokenizer.json: {e}")))?;
        Ok(HfTokenizer {
            source,
            files: Vec::new(),
            tokenizer,
            json,
            tokenizer_config: None,
            model_config: None,
            special_tokens_map: None,
            chat_template_file: None,
        })
    }

    /// Sets the contents of `tokenizer_config.json`.
    pub fn with_tokenizer_config(mut self, config: Json) -> Self {
        self.tokenizer_config = Some(config);
        self
    }

    /// Sets the contents of the model's `config.json` (`vocab_size`, `*_token_id`, `architectures`).
    pub fn with_model_config(mut self, config: Json) -> Self {
        self.model_config = Some(config);
        self
    }

    /// Every file [`Self::from_dir`] read, for the caller's cache key.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The folder or file this tokenizer was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The loaded tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The loaded tokenizer, kept after the conversion (building it again from the same
    /// `tokenizer.json` costs about as much as reading the folder did).
    pub fn into_tokenizer(self) -> Tokenizer {
        self.tokenizer
    }

    fn err_tok(&self, action: &'static str, e: impl std::fmt::Display) -> ToGgufError {
        ToGgufError::Tokenizers { tokenizer: self.source.clone(), action, error: e.to_string() }
    }

    fn inconsistent(&self, reason: String) -> ToGgufError {
        ToGgufError::Inconsistent { tokenizer: self.source.clone(), reason }
    }

    fn architecture(&self) -> Option<&str> {
        self.model_config.as_ref()?.get("architectures")?.get(0)?.as_str()
    }

    /// `config.json`'s `vocab_size` (or `text_config.vocab_size`).
    fn config_vocab_size(&self) -> Option<usize> {
        let c = self.model_config.as_ref()?;
        c.get("vocab_size").or_else(|| c.get("text_config")?.get("vocab_size"))?.as_u64().map(|v| v as usize)
    }

    /// `tokenizers`' added tokens by id (transformers' `added_tokens_decoder`).
    fn added_tokens_decoder(&self) -> HashMap<u32, tokenizers::AddedToken> {
        self.tokenizer.get_added_tokens_decoder().into_iter().collect()
    }

    /// The `chkhsh` of `get_vocab_base_pre`, and the number of ids it hashed.
    pub fn chkhsh(&self) -> Result<(String, usize), ToGgufError> {
        let enc = self.tokenizer.encode(CHKTXT, true).map_err(|e| self.err_tok("encoding the check text", e))?;
        let ids = enc.get_ids();
        Ok((sha256_hex(python_list_str(ids).as_bytes()), ids.len()))
    }
}

/// Python's `str(list_of_ints)`: `[1, 2, 3]`.
fn python_list_str(ids: &[u32]) -> String {
    let mut s = String::with_capacity(ids.len() * 7 + 2);
    s.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&id.to_string());
    }
    s.push(']');
    s
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// GGUF `tokenizer.*` metadata, in the order the converter writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerMetadata {
    /// The `(key, value)` pairs, each key once.
    pub kv: Vec<(String, GgufValue)>,
}

impl TokenizerMetadata {
    /// The value of `key`, if written.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The pairs, for the GGUF writer.
    pub fn into_pairs(self) -> Vec<(String, GgufValue)> {
        self.kv
    }

    /// Writes `key`: in place when already written (the value changes, the position does not),
    /// else at the end. That is gguf-py's `add_key_value` on a dict.
    fn set(&mut self, key: &str, value: GgufValue) {
        match self.kv.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.kv.push((key.to_string(), value)),
        }
    }

    fn token_text(&self, id: u32) -> Option<&str> {
        self.get(keys::TOKENS)?.as_array()?.get(id as usize)?.as_str()
    }

    /// The texts of the tokens llama.cpp stops generating at (its end-of-generation set): the
    /// EOS, EOT and EOM tokens, and control or user-defined tokens whose text llama.cpp's
    /// `llama_vocab::load` recognizes as an end of turn (`<|im_end|>`, `<|eot_id|>`,
    /// `<|endoftext|>`, `<end_of_turn>`...). In id order, each once: the `stop` parameters of
    /// an Ollama Modelfile.
    pub fn end_of_generation_tokens(&self) -> Vec<String> {
        // llama-vocab.cpp (llama-cpp-python 0.3.36): the texts that mark a token as EOG.
        const EOG_TEXTS: &[&str] = &[
            "<|eot_id|>",
            "<|im_end|>",
            "<|end|>",
            "<|return|>",
            "<|call|>",
            "<|flush|>",
            "<|calls|>",
            "<end_of_turn>",
            "<|endoftext|>",
            "<|end_of_text|>",
            "<EOT>",
            "_<EOT>",
            "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
            "<end_of_utterance>",
        ];
        let mut ids: Vec<u32> = [keys::EOS_ID, extra_keys::EOT_ID, extra_keys::EOM_ID]
            .iter()
            .filter_map(|k| self.get(k).and_then(GgufValue::as_u32))
            .collect();
        if let (Some(tokens), Some(types)) =
            (self.get(keys::TOKENS).and_then(GgufValue::as_array), self.get(keys::TOKEN_TYPE).and_then(GgufValue::as_array))
        {
            for ((id, tok), ty) in (0u32..).zip(tokens).zip(types) {
                let special = matches!(ty.as_i32(), Some(token_type::CONTROL | token_type::USER_DEFINED));
                if special && tok.as_str().is_some_and(|t| EOG_TEXTS.contains(&t)) {
                    ids.push(id);
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter().filter_map(|id| self.token_text(id).map(str::to_string)).collect()
    }
}

/// Python truthiness of a JSON value (`None`, `""`, `{}`, `[]`, `0` and `false` are false).
fn truthy(v: Option<&Json>) -> bool {
    match v {
        None | Some(Json::Null) => false,
        Some(Json::Bool(b)) => *b,
        Some(Json::String(s)) => !s.is_empty(),
        Some(Json::Array(a)) => !a.is_empty(),
        Some(Json::Object(o)) => !o.is_empty(),
        Some(Json::Number(n)) => n.as_f64() != Some(0.0),
    }
}

/// The `id` of a post-processor template piece `{"SpecialToken": {"id": ...}}` (or `Sequence`).
fn piece_id<'a>(piece: &'a Json, kind: &str) -> Option<&'a str> {
    piece.get(kind)?.get("id")?.as_str().filter(|s| !s.is_empty())
}

/// Python `a in (b, c)` for JSON values, where an absent value is `None`.
fn is_one_of(a: &Json, b: Option<&Json>, c: Option<&Json>) -> bool {
    b == Some(a) || c == Some(a)
}

/// gguf-py's `SpecialVocab`: merges, special-token ids, add-token flags, chat template and
/// normalizer flags, read from `tokenizer.json`, `tokenizer_config.json` and `config.json`.
#[derive(Debug, Default)]
struct SpecialVocab {
    merges: Vec<String>,
    /// `(type, id)` in insertion order (`bos`, `eos`, `unk`, `sep`, `pad`, `cls`, `mask`, `eot`, `eom`).
    special_token_ids: Vec<(String, u32)>,
    /// `(type, add)` in insertion order.
    add_special_token: Vec<(String, bool)>,
    chat_template: Option<Json>,
    normalizer_lowercase: Option<bool>,
    normalizer_strip_accents: Option<bool>,
}

impl SpecialVocab {
    fn load(hf: &HfTokenizer, load_merges: bool, n_vocab: Option<usize>) -> Result<SpecialVocab, ToGgufError> {
        let mut sv = SpecialVocab::default();
        let mut types: Vec<String> = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"].iter().map(|s| s.to_string()).collect();
        let json = &hf.json;
        if load_merges {
            sv.merges = merges_of(hf)?;
        }
        if let Some(n) = json.get("normalizer") {
            sv.parse_normalizer(n);
        }
        let added_tokens: &[Json] = json.get("added_tokens").and_then(Json::as_array).map(Vec::as_slice).unwrap_or(&[]);

        // `tokenizer_config` as a mutable dict, as the converter mutates it while reading the post-processor.
        let mut cfg: Option<Map<String, Json>> = hf.tokenizer_config.as_ref().and_then(Json::as_object).cloned();
        let cfg_truthy = |cfg: &Option<Map<String, Json>>| cfg.as_ref().is_some_and(|c| !c.is_empty());
        let get = |cfg: &Option<Map<String, Json>>, k: &str| cfg.as_ref().and_then(|c| c.get(k)).cloned();
        let mut special_bos = get(&cfg, "bos_token");
        let mut special_cls = get(&cfg, "cls_token");
        let mut special_eos = get(&cfg, "eos_token");
        let mut special_sep = get(&cfg, "sep_token");
        if !truthy(special_bos.as_ref()) && truthy(special_cls.as_ref()) && cfg_truthy(&cfg) {
            special_bos = special_cls.clone();
            cfg.as_mut().expect("truthy config").insert("bos_token".into(), special_bos.clone().expect("truthy cls"));
        }
        if !truthy(special_eos.as_ref()) && truthy(special_sep.as_ref()) && cfg_truthy(&cfg) {
            special_eos = special_sep.clone();
            cfg.as_mut().expect("truthy config").insert("eos_token".into(), special_eos.clone().expect("truthy sep"));
        }

        if let Some(post) = json.get("post_processor").filter(|p| truthy(Some(p))) {
            let processors: Vec<&Json> = match post.get("processors").and_then(Json::as_array) {
                Some(list) => list.iter().collect(),
                None => vec![post],
            };
            for processor in processors {
                match processor.get("type").and_then(Json::as_str) {
                    Some("ByteLevel") => {
                        sv.set_add_default("bos", false);
                        sv.set_add_default("eos", false);
                    }
                    Some("RobertaProcessing") => {
                        sv.set_add("bos", true);
                        sv.set_add("eos", true);
                        sv.set_add("sep", true);
                        if !truthy(special_cls.as_ref()) && cfg_truthy(&cfg) {
                            let cls = processor.get("cls").and_then(|c| c.get(0)).cloned().or_else(|| special_bos.clone());
                            special_cls = cls.clone();
                            cfg.as_mut().expect("truthy config").insert("cls_token".into(), cls.unwrap_or(Json::Null));
                        }
                        if !truthy(special_sep.as_ref()) && cfg_truthy(&cfg) {
                            let sep = processor.get("sep").and_then(|c| c.get(0)).cloned().or_else(|| special_eos.clone());
                            special_sep = sep.clone();
                            cfg.as_mut().expect("truthy config").insert("sep_token".into(), sep.unwrap_or(Json::Null));
                        }
                    }
                    Some("TemplateProcessing") => {
                        let empty = Vec::new();
                        let single = processor.get("single").and_then(Json::as_array).unwrap_or(&empty);
                        let pair = processor.get("pair").and_then(Json::as_array).unwrap_or(&empty);
                        let mut special_first: Option<Json> = None;
                        let mut special_last: Option<Json> = None;
                        if single.len() > 1 {
                            if let Some(first) = piece_id(&single[0], "SpecialToken") {
                                let first = Json::String(first.to_string());
                                special_first = Some(first.clone());
                                if !cfg_truthy(&cfg) {
                                    special_bos = Some(first.clone());
                                } else if !is_one_of(&first, special_bos.as_ref(), special_cls.as_ref()) {
                                    if !truthy(special_bos.as_ref()) {
                                        special_bos = Some(first.clone());
                                        cfg.as_mut().expect("truthy config").insert("bos_token".into(), first.clone());
                                    }
                                    if !truthy(special_cls.as_ref()) {
                                        special_cls = Some(first.clone());
                                        cfg.as_mut().expect("truthy config").insert("cls_token".into(), first.clone());
                                    }
                                }
                                sv.set_add("bos", is_one_of(&first, special_bos.as_ref(), special_cls.as_ref()));
                            }
                            if let Some(last) = piece_id(&single[single.len() - 1], "SpecialToken") {
                                let last = Json::String(last.to_string());
                                special_last = Some(last.clone());
                                if !cfg_truthy(&cfg) {
                                    special_eos = Some(last.clone());
                                } else if special_eos.as_ref() != Some(&last) {
                                    let c = cfg.as_mut().expect("truthy config");
                                    let old_eos = special_eos.clone().unwrap_or(Json::Null);
                                    if !types.iter().any(|t| t == "eot") {
                                        types.push("eot".into());
                                        c.insert("eot_token".into(), old_eos);
                                    } else if !types.iter().any(|t| t == "eom") {
                                        types.push("eom".into());
                                        c.insert("eom_token".into(), old_eos);
                                    }
                                    special_eos = Some(last.clone());
                                    c.insert("eos_token".into(), last.clone());
                                }
                                sv.set_add("eos", special_eos.as_ref() == Some(&last));
                            }
                        }
                        if !pair.is_empty() {
                            let first_matches =
                                special_first.as_ref().is_some_and(|f| piece_id(&pair[0], "SpecialToken") == f.as_str());
                            let last_matches = special_last
                                .as_ref()
                                .is_some_and(|l| piece_id(&pair[pair.len() - 1], "SpecialToken") == l.as_str());
                            let start = usize::from(first_matches);
                            let stop = pair.len() - usize::from(last_matches);
                            let inner = if start < stop { &pair[start..stop] } else { &[][..] };
                            if !inner.is_empty() {
                                let a = piece_id(&inner[0], "Sequence");
                                let b = piece_id(&inner[inner.len() - 1], "Sequence");
                                let middle = if inner.len() >= 2 { &inner[1..inner.len() - 1] } else { &[][..] };
                                if a == Some("A") && b == Some("B") && !middle.is_empty() {
                                    let mut add_sep = false;
                                    if let Some(entry) = piece_id(&middle[0], "SpecialToken") {
                                        let entry = Json::String(entry.to_string());
                                        if is_one_of(&entry, special_sep.as_ref(), special_eos.as_ref()) && special_last.is_none()
                                        {
                                            add_sep = true;
                                        }
                                    }
                                    if middle.len() == 2 {
                                        if let Some(entry) = piece_id(&middle[1], "SpecialToken") {
                                            let entry = Json::String(entry.to_string());
                                            if is_one_of(&entry, special_sep.as_ref(), special_eos.as_ref()) {
                                                add_sep = true;
                                            }
                                        }
                                    }
                                    sv.set_add("sep", add_sep);
                                    if add_sep && !truthy(special_sep.as_ref()) && cfg_truthy(&cfg) {
                                        cfg.as_mut()
                                            .expect("truthy config")
                                            .insert("sep_token".into(), special_eos.clone().unwrap_or(Json::Null));
                                    }
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }

        if cfg_truthy(&cfg) {
            let cfg = cfg.as_ref().expect("truthy config");
            sv.chat_template = match cfg.get("chat_template") {
                Some(t @ (Json::String(_) | Json::Array(_))) => Some(t.clone()),
                Some(Json::Null) => None,
                // The converter warns about other types and ignores them.
                Some(_) => None,
                None => hf.chat_template_file.clone(),
            };
            for typ in &types {
                if let Some(Json::Bool(add)) = cfg.get(&format!("add_{typ}_token")) {
                    if !sv.add_special_token.iter().any(|(t, _)| t == typ) {
                        sv.add_special_token.push((typ.clone(), *add));
                    }
                }
                let content = match cfg.get(&format!("{typ}_token")) {
                    Some(Json::String(s)) => s.as_str(),
                    Some(Json::Object(o)) => match o.get("content") {
                        Some(Json::String(s)) => s.as_str(),
                        _ => continue,
                    },
                    _ => continue,
                };
                let id = added_tokens
                    .iter()
                    .find(|t| t.get("content").and_then(Json::as_str) == Some(content))
                    .and_then(|t| t.get("id"));
                sv.set_special_token(hf, typ, id, n_vocab)?;
            }
        }

        if let Some(config) = &hf.model_config {
            for typ in &types {
                let key = format!("{typ}_token_id");
                let id = match config.get(&key) {
                    Some(Json::Null) | None => config.get("text_config").and_then(|t| t.get(&key)),
                    v => v,
                };
                sv.set_special_token(hf, typ, id, n_vocab)?;
            }
        }
        Ok(sv)
    }

    fn set_add(&mut self, typ: &str, add: bool) {
        match self.add_special_token.iter_mut().find(|(t, _)| t == typ) {
            Some((_, v)) => *v = add,
            None => self.add_special_token.push((typ.to_string(), add)),
        }
    }

    fn set_add_default(&mut self, typ: &str, add: bool) {
        if !self.add_special_token.iter().any(|(t, _)| t == typ) {
            self.add_special_token.push((typ.to_string(), add));
        }
    }

    /// `_set_special_token`: the first id set for a type wins; non-integers are ignored.
    fn set_special_token(
        &mut self,
        hf: &HfTokenizer,
        typ: &str,
        id: Option<&Json>,
        n_vocab: Option<usize>,
    ) -> Result<(), ToGgufError> {
        let Some(Json::Number(n)) = id else { return Ok(()) };
        let Some(id) = n.as_i64() else { return Ok(()) };
        if id < 0 {
            return Err(hf.inconsistent(format!("invalid value for special token type {typ}: {id}")));
        }
        if n_vocab.is_some_and(|n| id as u64 >= n as u64) {
            tracing::warn!(typ, id, "special token id out of range of the vocabulary; skipped");
            return Ok(());
        }
        let Ok(id) = u32::try_from(id) else { return Ok(()) };
        if !self.special_token_ids.iter().any(|(t, _)| t == typ) {
            self.special_token_ids.push((typ.to_string(), id));
        }
        Ok(())
    }

    fn parse_normalizer(&mut self, n: &Json) {
        match n.get("type").and_then(Json::as_str) {
            Some("Lowercase") => self.normalizer_lowercase = Some(true),
            Some("StripAccents") => self.normalizer_strip_accents = Some(true),
            Some("BertNormalizer") => {
                if let Some(v) = n.get("lowercase") {
                    self.normalizer_lowercase = v.as_bool();
                }
                if let Some(v) = n.get("strip_accents") {
                    self.normalizer_strip_accents = v.as_bool();
                }
            }
            Some("Sequence") => {
                for sub in n.get("normalizers").and_then(Json::as_array).into_iter().flatten() {
                    self.parse_normalizer(sub);
                }
            }
            _ => {}
        }
    }

    /// `add_to_gguf`.
    fn add_to(&self, meta: &mut TokenizerMetadata) {
        if !self.merges.is_empty() {
            meta.set(keys::MERGES, GgufValue::Array(self.merges.iter().map(|m| GgufValue::String(m.clone())).collect()));
        }
        for (typ, id) in &self.special_token_ids {
            let key = match typ.as_str() {
                "bos" => keys::BOS_ID,
                "eos" => keys::EOS_ID,
                "unk" => keys::UNK_ID,
                "sep" => extra_keys::SEP_ID,
                "pad" => keys::PAD_ID,
                "mask" => extra_keys::MASK_ID,
                "eot" => extra_keys::EOT_ID,
                "eom" => extra_keys::EOM_ID,
                // gguf-py has no writer method for `cls` ids; the converter skips them.
                _ => continue,
            };
            meta.set(key, GgufValue::U32(*id));
        }
        for (typ, add) in &self.add_special_token {
            let key = match typ.as_str() {
                "bos" => keys::ADD_BOS,
                "eos" => keys::ADD_EOS,
                "sep" => extra_keys::ADD_SEP,
                _ => continue,
            };
            meta.set(key, GgufValue::Bool(*add));
        }
        match &self.chat_template {
            Some(Json::String(t)) => meta.set(keys::CHAT_TEMPLATE, GgufValue::String(t.clone())),
            Some(Json::Array(list)) => {
                // gguf-py's add_chat_template: the `default` one is tokenizer.chat_template, the
                // others tokenizer.chat_template.{name} with their names listed.
                let mut default = None;
                let mut names = Vec::new();
                for choice in list {
                    let name: String = choice
                        .get("name")
                        .and_then(Json::as_str)
                        .unwrap_or("")
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                        .collect();
                    let Some(template) = choice.get("template").and_then(Json::as_str) else { continue };
                    if name.is_empty() {
                        continue;
                    }
                    if name == "default" {
                        default = Some(template.to_string());
                    } else {
                        meta.set(&format!("{}.{name}", keys::CHAT_TEMPLATE), GgufValue::String(template.to_string()));
                        if !names.contains(&name) {
                            names.push(name);
                        }
                    }
                }
                if !names.is_empty() {
                    meta.set(extra_keys::CHAT_TEMPLATES, GgufValue::Array(names.into_iter().map(GgufValue::String).collect()));
                }
                if let Some(t) = default {
                    meta.set(keys::CHAT_TEMPLATE, GgufValue::String(t));
                }
            }
            _ => {}
        }
        if let Some(v) = self.normalizer_lowercase {
            meta.set(extra_keys::NORMALIZER_LOWERCASE, GgufValue::Bool(v));
        }
        if let Some(v) = self.normalizer_strip_accents {
            meta.set(extra_keys::NORMALIZER_STRIP_ACCENTS, GgufValue::Bool(v));
        }
    }
}

/// `tokenizer.json`'s merges as `"left right"` strings. The pair form (tokenizers >= 0.20) writes a
/// space inside a piece as U+0120, as gguf-py does, so the string splits unambiguously.
fn merges_of(hf: &HfTokenizer) -> Result<Vec<String>, ToGgufError> {
    let Some(merges) = hf.json.get("model").and_then(|m| m.get("merges")).and_then(Json::as_array) else {
        return Ok(Vec::new());
    };
    let bad = || hf.inconsistent("tokenizer.json: model.merges is neither strings nor [left, right] pairs".into());
    merges
        .iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(pair) if pair.len() == 2 => {
                let enc =
                    |p: &Json| p.as_str().map(|s| s.chars().map(|c| if c == ' ' { '\u{120}' } else { c }).collect::<String>());
                match (enc(&pair[0]), enc(&pair[1])) {
                    (Some(a), Some(b)) => Ok(format!("{a} {b}")),
                    _ => Err(bad()),
                }
            }
            _ => Err(bad()),
        })
        .collect()
}

/// `tokenizer.json`'s merges as `(left, right)` pairs, in rank order.
fn merge_pairs(hf: &HfTokenizer) -> Result<Vec<(String, String)>, ToGgufError> {
    let Some(merges) = hf.json.get("model").and_then(|m| m.get("merges")).and_then(Json::as_array) else {
        return Ok(Vec::new());
    };
    let bad = || hf.inconsistent("tokenizer.json: model.merges is neither \"left right\" strings nor [left, right] pairs".into());
    merges
        .iter()
        .map(|m| match m {
            Json::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(bad),
            Json::Array(pair) if pair.len() == 2 => match (pair[0].as_str(), pair[1].as_str()) {
                (Some(a), Some(b)) => Ok((a.to_string(), b.to_string())),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        })
        .collect()
}

/// `does_token_look_special`: added tokens that some models forget to mark special.
fn looks_special(token: &str) -> bool {
    matches!(token, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<\u{ff5c}") && token.ends_with("\u{ff5c}>"))
        || (token.starts_with("<unused") && token.ends_with('>'))
}

/// transformers' `clean_up_tokenization` (applied by `decode` when the config asks for it).
fn clean_up_tokenization(s: &str) -> String {
    s.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

/// Which of the converter's vocabulary routes a `tokenizer.json` takes.
fn tokenizer_model(hf: &HfTokenizer) -> Result<&'static str, ToGgufError> {
    let model = hf.json.get("model").unwrap_or(&Json::Null);
    let ty = model.get("type").and_then(Json::as_str).unwrap_or("");
    if ty != "BPE" {
        return Err(ToGgufError::Unsupported {
            tokenizer: hf.source.clone(),
            model: if ty.is_empty() { "untyped".into() } else { ty.to_string() },
            reason: "only BPE tokenizer.json files are exported (byte-level as \"gpt2\", byte-fallback as \"llama\")",
        });
    }
    // LlamaHfVocab's test: byte fallback and a Sequence decoder is SentencePiece-style BPE
    // (Llama 2, TinyLlama, Mistral v0.1); Llama 3 (`ignore_merges`, no byte fallback) is byte-level.
    let byte_fallback = model.get("byte_fallback").and_then(Json::as_bool).unwrap_or(false);
    let seq_decoder = hf.json.get("decoder").and_then(|d| d.get("type")).and_then(Json::as_str) == Some("Sequence");
    Ok(if byte_fallback && seq_decoder { "llama" } else { "gpt2" })
}

/// Checks an explicit pre-tokenizer name against the names llama.cpp knows.
fn check_pre_name(hf: &HfTokenizer, name: &str) -> Result<(), ToGgufError> {
    let known = || {
        PRE_BY_HASH
            .iter()
            .map(|(_, n)| *n)
            .chain(super::gguf::SUPPORTED_PRE_NAMES.iter().copied())
            .chain(super::gguf::UNSUPPORTED_PRE_NAMES.iter().copied())
    };
    if known().any(|n| n == name) {
        return Ok(());
    }
    let suggestion = known().min_by_key(|n| edit_distance(n, name)).unwrap_or("gpt-2");
    Err(ToGgufError::UnknownPreName {
        tokenizer: hf.source.clone(),
        name: name.to_string(),
        suggestion: format!("\"{suggestion}\""),
    })
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Choices [`to_gguf_with`] makes where the converter's output is not the only sensible one.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    pre: Option<String>,
    converter_scores: bool,
}

impl ExportOptions {
    /// Sets `tokenizer.ggml.pre` instead of detecting it (a name llama.cpp knows).
    pub fn with_pre(mut self, pre: impl Into<String>) -> Self {
        self.pre = Some(pre.into());
        self
    }

    /// For a `"llama"` vocabulary, writes the converter's placeholder scores (`-1000.0` for every
    /// token) instead of merge-rank scores. Only for comparing with the converter: llama.cpp then
    /// merges by position and tokenizes differently from Hugging Face (see the module docs).
    pub fn with_converter_scores(mut self, yes: bool) -> Self {
        self.converter_scores = yes;
        self
    }
}

/// The GGUF `tokenizer.*` metadata `convert_hf_to_gguf.py` writes for `hf`.
///
/// `pre` overrides the pre-tokenizer detection (for a `"gpt2"` model); it must be a name llama.cpp
/// knows. Without it, an unrecognized pre-tokenizer is [`ToGgufError::UnknownPreTokenizer`].
/// Same as [`to_gguf_with`] with only the pre-tokenizer set.
pub fn to_gguf(hf: &HfTokenizer, pre: Option<&str>) -> Result<TokenizerMetadata, ToGgufError> {
    let mut opts = ExportOptions::default();
    if let Some(p) = pre {
        opts = opts.with_pre(p);
    }
    to_gguf_with(hf, &opts)
}

/// The GGUF `tokenizer.*` metadata for `hf`, with [`ExportOptions`].
pub fn to_gguf_with(hf: &HfTokenizer, opts: &ExportOptions) -> Result<TokenizerMetadata, ToGgufError> {
    let pre = opts.pre.as_deref();
    let model = tokenizer_model(hf)?;
    let mut meta = TokenizerMetadata { kv: Vec::new() };
    let llama_arch = hf.architecture() == Some("LlamaForCausalLM");
    if llama_arch {
        if let Some(Json::Bool(prefix)) = hf.tokenizer_config.as_ref().and_then(|c| c.get("add_prefix_space")) {
            meta.set(extra_keys::ADD_SPACE_PREFIX, GgufValue::Bool(*prefix));
        }
    }
    match model {
        "gpt2" => set_vocab_gpt2(hf, pre, &mut meta)?,
        _ => set_vocab_llama_hf(hf, pre, opts.converter_scores, &mut meta)?,
    }
    if llama_arch && hf.config_vocab_size() == Some(49152) {
        meta.set(keys::ADD_BOS, GgufValue::Bool(false));
    }
    Ok(meta)
}

fn strings(v: impl IntoIterator<Item = String>) -> GgufValue {
    GgufValue::Array(v.into_iter().map(GgufValue::String).collect())
}

fn ints(v: &[i32]) -> GgufValue {
    GgufValue::Array(v.iter().map(|&t| GgufValue::I32(t)).collect())
}

/// `_set_vocab_gpt2`: `get_vocab_base`, the detected pre-tokenizer, and `SpecialVocab` with merges.
fn set_vocab_gpt2(hf: &HfTokenizer, pre: Option<&str>, meta: &mut TokenizerMetadata) -> Result<(), ToGgufError> {
    let vocab = hf.tokenizer.get_vocab(true);
    let vocab_size = hf.config_vocab_size().unwrap_or(vocab.len());
    let max_id = vocab.values().copied().max().unwrap_or(0);
    if !vocab.is_empty() && max_id as usize >= vocab_size {
        return Err(hf.inconsistent(format!("token id {max_id} is not below the vocabulary size {vocab_size} (config.json)")));
    }

    let (hash, n_ids) = hf.chkhsh()?;
    let pre = match pre {
        Some(name) => {
            check_pre_name(hf, name)?;
            if let Some(detected) = pre_for_hash(&hash).filter(|d| *d != name) {
                tracing::warn!(given = name, detected, "explicit pre-tokenizer differs from the detected one");
            }
            name.to_string()
        }
        None => match pre_for_hash(&hash) {
            Some(name) => name.to_string(),
            None => return Err(ToGgufError::UnknownPreTokenizer { tokenizer: hf.source.clone(), hash, n_ids }),
        },
    };
    tracing::debug!(chkhsh = %hash, pre, "BPE pre-tokenizer");

    let mut reverse: HashMap<u32, &str> = HashMap::with_capacity(vocab.len());
    for (tok, id) in &vocab {
        reverse.insert(*id, tok.as_str());
    }
    let decoder = hf.added_tokens_decoder();
    let added_vocab: HashSet<&str> = decoder.values().map(|t| t.content.as_str()).collect();
    let clean_up =
        hf.tokenizer_config.as_ref().and_then(|c| c.get("clean_up_tokenization_spaces")).and_then(Json::as_bool).unwrap_or(false);

    let mut tokens = Vec::with_capacity(vocab_size);
    let mut types = Vec::with_capacity(vocab_size);
    for i in 0..vocab_size as u32 {
        let Some(&token) = reverse.get(&i) else {
            tokens.push(format!("[PAD{i}]"));
            types.push(token_type::UNUSED);
            continue;
        };
        let mut token = token.to_string();
        if added_vocab.contains(token.as_str()) {
            let Some(added) = decoder.get(&i) else {
                return Err(hf.inconsistent(format!(
                    "added token {token:?} has id {i} in the vocabulary but another id as an added token"
                )));
            };
            if !added.normalized {
                // The converter's "pre-normalization": llama.cpp matches these tokens in raw text.
                let ids = hf.tokenizer.encode(token.as_str(), false).map_err(|e| hf.err_tok("encoding an added token", e))?;
                let mut text = hf.tokenizer.decode(ids.get_ids(), false).map_err(|e| hf.err_tok("decoding an added token", e))?;
                if clean_up {
                    text = clean_up_tokenization(&text);
                }
                if text != token {
                    tracing::info!(from = token, to = text, "added token changed by encoding and decoding");
                }
                token = text;
            }
            if added.special || looks_special(&token) {
                types.push(token_type::CONTROL);
            } else {
                token = token.replace('\u{2581}', " ");
                types.push(token_type::USER_DEFINED);
            }
        } else {
            types.push(token_type::NORMAL);
        }
        tokens.push(token);
    }

    meta.set(keys::MODEL, GgufValue::String("gpt2".into()));
    meta.set(keys::PRE, GgufValue::String(pre));
    meta.set(keys::TOKENS, strings(tokens));
    meta.set(keys::TOKEN_TYPE, ints(&types));
    let sv = SpecialVocab::load(hf, true, None)?;
    if sv.merges.is_empty() {
        return Err(hf.inconsistent(
            "tokenizer.json has no BPE merges; llama.cpp cannot load a \"gpt2\" vocabulary without tokenizer.ggml.merges".into(),
        ));
    }
    sv.add_to(meta);
    Ok(())
}

/// `_set_vocab_llama_hf` (gguf-py's `LlamaHfVocab`): a SentencePiece-style BPE `tokenizer.json`.
///
/// Scores: the converter writes `-1000.0` for every token; unless `converter_scores`, a token made
/// by merge `r` (its first, lowest-ranked one) scores `-r` and every other token `0.0`.
fn set_vocab_llama_hf(
    hf: &HfTokenizer,
    pre: Option<&str>,
    converter_scores: bool,
    meta: &mut TokenizerMetadata,
) -> Result<(), ToGgufError> {
    if let Some(name) = pre.filter(|n| *n != "default") {
        return Err(hf.inconsistent(format!(
            "pre-tokenizer '{name}' was given, but this is a SentencePiece-style (\"llama\") vocabulary, whose pre-tokenizer is always \"default\""
        )));
    }
    let vocab = hf.tokenizer.get_vocab(true);
    let base_size = hf.tokenizer.get_vocab_size(false);
    let mut reverse: HashMap<u32, &str> = HashMap::with_capacity(vocab.len());
    for (tok, id) in &vocab {
        reverse.insert(*id, tok.as_str());
    }
    // Added tokens beyond the base vocabulary, by id.
    let mut added: Vec<(u32, String)> = hf
        .added_tokens_decoder()
        .into_iter()
        .filter(|(id, _)| *id as usize >= base_size)
        .map(|(id, t)| (id, t.content))
        .collect();
    added.sort_unstable_by_key(|(id, _)| *id);

    // transformers' all_special_tokens: the named special tokens and additional_special_tokens.
    let mut special_texts: Vec<String> = Vec::new();
    for source in [hf.tokenizer_config.as_ref(), hf.special_tokens_map.as_ref()].into_iter().flatten() {
        for key in ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"] {
            if let Some(text) = token_content(source.get(key)) {
                special_texts.push(text);
            }
        }
        for t in source.get("additional_special_tokens").and_then(Json::as_array).into_iter().flatten() {
            if let Some(text) = token_content(Some(t)) {
                special_texts.push(text);
            }
        }
    }
    let special_ids: HashSet<u32> = special_texts.iter().filter_map(|t| vocab.get(t).copied()).collect();

    let mut tokens = Vec::with_capacity(base_size + added.len());
    let mut types = Vec::with_capacity(base_size + added.len());
    for id in 0..base_size as u32 {
        let Some(&text) = reverse.get(&id) else {
            return Err(hf.inconsistent(format!("the base vocabulary has no token with id {id}")));
        };
        types.push(if is_byte_token(text) {
            token_type::BYTE
        } else if special_ids.contains(&id) {
            token_type::CONTROL
        } else {
            token_type::NORMAL
        });
        tokens.push(text.to_string());
    }
    for (id, text) in added {
        if id as usize != tokens.len() {
            return Err(hf.inconsistent(format!(
                "added token {text:?} has id {id}, but added tokens must follow the {} base tokens without gaps",
                tokens.len()
            )));
        }
        types.push(if special_texts.contains(&text) { token_type::CONTROL } else { token_type::USER_DEFINED });
        tokens.push(text);
    }
    let n_vocab = tokens.len();

    let scores = if converter_scores {
        vec![GgufValue::F32(-1000.0); n_vocab]
    } else {
        let mut rank: HashMap<String, usize> = HashMap::new();
        for (r, (a, b)) in merge_pairs(hf)?.into_iter().enumerate() {
            rank.entry(a + &b).or_insert(r);
        }
        tokens.iter().map(|t| GgufValue::F32(rank.get(t).map_or(0.0, |&r| -(r as f32)))).collect()
    };

    meta.set(keys::MODEL, GgufValue::String("llama".into()));
    meta.set(keys::PRE, GgufValue::String("default".into()));
    meta.set(keys::TOKENS, strings(tokens));
    meta.set(extra_keys::SCORES, GgufValue::Array(scores));
    meta.set(keys::TOKEN_TYPE, ints(&types));
    SpecialVocab::load(hf, false, Some(n_vocab))?.add_to(meta);
    Ok(())
}

/// The text of a special-token entry of a config: a string or `{"content": ...}`.
fn token_content(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

/// `<0xXX>`: a SentencePiece byte-fallback token.
fn is_byte_token(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 6 && text.starts_with("<0x") && b[5] == b'>' && b[3].is_ascii_hexdigit() && b[4].is_ascii_hexdigit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::reader::{parse, test_writer::gguf_bytes};
    use crate::gguf::GgufFile;
    use crate::tokenizer::gguf::from_gguf;
    use std::io::Cursor;

    fn fixture_dir(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/to-gguf").join(name)
    }

    /// gguf-py's name of a value's type, as scripts/gguf_tokenizer_reference.py prints it.
    fn py_type(v: &GgufValue) -> &'static str {
        match v {
            GgufValue::String(_) => "STRING",
            GgufValue::U32(_) => "UINT32",
            GgufValue::I32(_) => "INT32",
            GgufValue::F32(_) => "FLOAT32",
            GgufValue::Bool(_) => "BOOL",
            GgufValue::Array(_) => "ARRAY",
            _ => "OTHER",
        }
    }

    /// A scalar as Python's `json.dumps` writes it.
    fn py_json(v: &GgufValue) -> String {
        match v {
            GgufValue::String(s) => serde_json::to_string(s).expect("json"),
            GgufValue::F32(f) if f.fract() == 0.0 => format!("{f:.1}"),
            GgufValue::F32(f) => f.to_string(),
            GgufValue::Bool(b) => if *b { "true" } else { "false" }.into(),
            other => other.as_int().map(|i| i.to_string()).unwrap_or_default(),
        }
    }

    /// The reference script's summary of a value: arrays over 64 elements as `{len, sha256}` of
    /// Python's `json.dumps(list, ensure_ascii=False)`.
    fn summary(v: &GgufValue) -> Json {
        match v {
            GgufValue::Array(items) if items.len() > 64 => {
                let text = format!("[{}]", items.iter().map(py_json).collect::<Vec<_>>().join(", "));
                serde_json::json!({"len": items.len(), "sha256": sha256_hex(text.as_bytes())})
            }
            GgufValue::Array(items) => {
                Json::Array(items.iter().map(|i| serde_json::from_str(&py_json(i)).expect("json")).collect())
            }
            other => serde_json::from_str(&py_json(other)).expect("json"),
        }
    }

    /// `to_gguf` on a fixture folder equals the converter's output (tests/data/to-gguf/NAME/expected.json,
    /// from scripts/make_to_gguf_fixtures.py): same keys, order, types and values.
    fn check_against_converter(name: &str, opts: ExportOptions) -> (HfTokenizer, TokenizerMetadata) {
        let (dir, expected) = match name {
            "tiny" => (tiny_dir(), fixture_dir("tiny-expected.json")),
            _ => (fixture_dir(name), fixture_dir(name).join("expected.json")),
        };
        let hf = HfTokenizer::from_dir(&dir).expect("load fixture");
        let meta = to_gguf_with(&hf, &opts).expect("to_gguf");
        assert_matches_reference(&hf, &meta, &expected);
        (hf, meta)
    }

    fn tiny_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-tokenizer")
    }

    /// `meta` equals the output of scripts/gguf_tokenizer_reference.py saved at `expected`.
    fn assert_matches_reference(hf: &HfTokenizer, meta: &TokenizerMetadata, expected: &Path) {
        let name = expected.display();
        let expected: Json = serde_json::from_str(&std::fs::read_to_string(expected).expect("read")).expect("json");
        if let Some(h) = expected["chkhsh"].as_str() {
            assert_eq!(hf.chkhsh().expect("chkhsh").0, h, "{name}: chkhsh");
        }
        let want: Vec<(String, Json, String)> = expected["kv"]
            .as_array()
            .expect("kv")
            .iter()
            .map(|e| (e[0].as_str().expect("key").to_string(), e[1].clone(), e[2].as_str().expect("type").to_string()))
            .collect();
        let got: Vec<(String, Json, String)> =
            meta.kv.iter().map(|(k, v)| (k.clone(), summary(v), py_type(v).to_string())).collect();
        assert_eq!(got.iter().map(|g| &g.0).collect::<Vec<_>>(), want.iter().map(|w| &w.0).collect::<Vec<_>>(), "{name}: keys");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w, "{name}: {}", g.0);
        }
    }

    fn gguf_of(meta: &TokenizerMetadata) -> GgufFile {
        let kv: Vec<(&str, GgufValue)> = meta.kv.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let bytes = gguf_bytes(&kv, &[], 32);
        parse(Cursor::new(&bytes), "exported.gguf".into(), bytes.len() as u64).expect("parse exported metadata")
    }

    const SAMPLES: &[&str] = &[
        "Hello, world! It's a dog's life, isn't it? WE'LL see.",
        "你今年的运势很好，事业上会有贵人相助。",
        "2024年3月14日，圆周率约为3.14159。 12345",
        "  leading spaces\n\n\ttabs and\r\nnewlines   ",
        "emoji 🚀😶\u{200d}🌫️ and ✅",
        "<|im_start|>user\n算命<|im_end|>\n<|im_start|>assistant\n",
        "<|endoftext|>text<|im_end|><|im_end|>",
    ];

    /// `from_gguf` on the exported metadata encodes `texts` like the Hugging Face tokenizer.
    fn check_encodes_like_hf(hf: &HfTokenizer, meta: &TokenizerMetadata, texts: &[&str]) {
        let back = from_gguf(&gguf_of(meta)).expect("from_gguf on exported metadata");
        for text in texts {
            let want = hf.tokenizer().encode(*text, false).expect("encode").get_ids().to_vec();
            assert_eq!(back.encode(text, false).expect("encode"), want, "{text:?}");
        }
    }

    #[test]
    fn matches_the_converter_on_the_tiny_tokenizer() {
        let (hf, meta) = check_against_converter("tiny", ExportOptions::default().with_pre("gpt-2"));
        check_encodes_like_hf(&hf, &meta, SAMPLES);
    }

    #[test]
    fn matches_the_converter_on_a_llama3_shaped_tokenizer() {
        let (hf, meta) = check_against_converter("llama3ish", ExportOptions::default().with_pre("llama-bpe"));
        // Unused ids up to config.json's vocab_size, user-defined tokens with ▁ as spaces.
        let tokens = meta.get(keys::TOKENS).and_then(GgufValue::as_array).expect("tokens");
        assert_eq!(tokens.last().and_then(GgufValue::as_str), Some("[PAD1011]"));
        assert!(tokens.iter().any(|t| t.as_str() == Some(" x ")));
        let mut texts = SAMPLES.to_vec();
        texts.push("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<tool>你好<|eot_id|>");
        check_encodes_like_hf(&hf, &meta, &texts);
        let back = from_gguf(&gguf_of(&meta)).expect("from_gguf");
        assert!(back.add_bos);
        assert_eq!(back.encode("hi", true).expect("encode")[0], 1000);
    }

    #[test]
    fn matches_the_converter_on_a_sentencepiece_style_bpe_but_for_the_scores() {
        let (hf, meta) = check_against_converter("spmbpe", ExportOptions::default().with_converter_scores(true));
        let ours = to_gguf(&hf, None).expect("to_gguf");
        let without_scores =
            |m: &TokenizerMetadata| m.kv.iter().filter(|(k, _)| k != extra_keys::SCORES).cloned().collect::<Vec<_>>();
        assert_eq!(without_scores(&ours), without_scores(&meta));
        // Merge-rank scores: "bc" is merge 0, "ab" merge 9 (see scripts/make_to_gguf_fixtures.py).
        let tokens = ours.get(keys::TOKENS).and_then(GgufValue::as_array).expect("tokens");
        let scores = ours.get(extra_keys::SCORES).and_then(GgufValue::as_array).expect("scores");
        let score = |text: &str| scores[tokens.iter().position(|t| t.as_str() == Some(text)).expect("token")].as_f32();
        assert_eq!(
            (score("bc"), score("er"), score("ab"), score("a"), score("<s>")),
            (Some(-0.0), Some(-1.0), Some(-9.0), Some(0.0), Some(0.0))
        );
        let types = meta.get(keys::TOKEN_TYPE).and_then(GgufValue::as_array).expect("types");
        let ty = |id: usize| types[id].as_i32().expect("i32");
        assert_eq!(
            (ty(0), ty(1), ty(3), ty(3 + 255)),
            (token_type::CONTROL, token_type::CONTROL, token_type::BYTE, token_type::BYTE)
        );
        assert_eq!(ty(types.len() - 2), token_type::CONTROL, "<|user|> is an additional special token");
        assert_eq!(ty(types.len() - 1), token_type::USER_DEFINED, "<|assistant|> is not");
    }

    #[test]
    fn an_unknown_pre_tokenizer_is_an_error_naming_the_hash_and_the_tokenizer() {
        let hf = HfTokenizer::from_dir(&tiny_dir()).expect("load");
        let e = to_gguf(&hf, None).unwrap_err();
        let hash = "4308a7e053c997e458d932f62135ba6331f5db7029bf7a8633fb607dd5695b38";
        assert!(matches!(&e, ToGgufError::UnknownPreTokenizer { hash: h, .. } if h == hash), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(hash) && msg.contains("tiny-tokenizer") && msg.contains("llama-bpe"), "{msg}");
    }

    #[test]
    fn an_explicit_pre_tokenizer_llama_cpp_does_not_know_is_an_error() {
        let hf = HfTokenizer::from_dir(&tiny_dir()).expect("load");
        let e = to_gguf(&hf, Some("gpt2")).unwrap_err();
        assert!(matches!(&e, ToGgufError::UnknownPreName { name, .. } if name == "gpt2"), "{e}");
        assert!(e.to_string().contains("\"gpt-2\""), "{e}");
        let spm = HfTokenizer::from_dir(&fixture_dir("spmbpe")).expect("load");
        assert!(matches!(to_gguf(&spm, Some("llama-bpe")), Err(ToGgufError::Inconsistent { .. })));
    }

    #[test]
    fn pre_for_hash_takes_the_last_of_duplicate_entries_as_the_converter_does() {
        assert_eq!(pre_for_hash("b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166"), Some("olmo"));
        assert_eq!(pre_for_hash("855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249"), Some("smollm"));
        assert_eq!(pre_for_hash("0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5"), Some("llama-bpe"));
        assert_eq!(pre_for_hash("e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea"), Some("qwen2"));
        assert_eq!(pre_for_hash("049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754"), Some("deepseek-llm"));
        assert_eq!(pre_for_hash("b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5"), Some("deepseek-r1-qwen"));
        assert_eq!(pre_for_hash("0"), None);
        assert_eq!(python_list_str(&[1, 22, 333]), "[1, 22, 333]");
        assert_eq!(python_list_str(&[]), "[]");
    }

    #[test]
    fn merges_in_pair_form_write_spaces_as_u0120() {
        let mut json: Json =
            serde_json::from_str(&std::fs::read_to_string(tiny_dir().join("tokenizer.json")).expect("read")).expect("json");
        json["model"]["merges"] = serde_json::json!([["a b", "c"], ["d", "e"]]);
        let hf = HfTokenizer { json, ..HfTokenizer::from_dir(&tiny_dir()).expect("load") };
        assert_eq!(merges_of(&hf).expect("merges"), vec!["a\u{120}b c".to_string(), "d e".to_string()]);
    }

    /// The default model's GGUF (`PIPE_TEST_GGUF`), or `None` (the test is skipped) when unset.
    fn default_gguf() -> Option<GgufFile> {
        let Some(path) = std::env::var_os("PIPE_TEST_GGUF") else {
            // scripts/test.sh (and so CI) always provides the model and sets PIPE_REQUIRE_MODELS.
            assert!(std::env::var_os("PIPE_REQUIRE_MODELS").is_none(), "PIPE_TEST_GGUF must be set");
            eprintln!("skipping: PIPE_TEST_GGUF is not set");
            return None;
        };
        Some(GgufFile::open(Path::new(&path)).expect("open GGUF"))
    }

    fn tokenizer_kv(file: &GgufFile) -> Vec<(String, GgufValue)> {
        let mut kv: Vec<_> = file.metadata.iter().filter(|(k, _)| k.starts_with("tokenizer.")).cloned().collect();
        kv.sort_by(|a, b| a.0.cmp(&b.0));
        kv
    }

    fn sorted(meta: &TokenizerMetadata) -> Vec<(String, GgufValue)> {
        let mut kv = meta.kv.clone();
        kv.sort_by(|a, b| a.0.cmp(&b.0));
        kv
    }

    fn assert_same_keys(got: &[(String, GgufValue)], want: &[(String, GgufValue)]) {
        let names = |kv: &[(String, GgufValue)]| kv.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        assert_eq!(names(got), names(want));
        for ((k, a), (_, b)) in got.iter().zip(want) {
            assert!(a == b, "{k} differs: {} vs {}", summary(a), summary(b));
        }
    }

    /// GGUF -> from_gguf -> Hugging Face tokenizer (with SmolLM2-135M-Instruct's own
    /// tokenizer_config.json and config.json fields) -> to_gguf gives back the GGUF's tokenizer
    /// metadata key for key, and the exported metadata tokenizes like llama.cpp.
    #[test]
    fn smollm2_round_trip_gives_back_the_gguf_tokenizer_metadata() {
        let Some(file) = default_gguf() else { return };
        let original = from_gguf(&file).expect("from_gguf");
        let hf = HfTokenizer::from_json("SmolLM2-135M-Instruct (from GGUF)", &original.to_tokenizer_json())
            .expect("tokenizer.json")
            .with_tokenizer_config(serde_json::json!({
                "add_prefix_space": false,
                "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
                "bos_token": "<|im_start|>",
                "eos_token": "<|im_end|>",
                "pad_token": "<|im_end|>",
                "unk_token": "<|endoftext|>",
                "clean_up_tokenization_spaces": false,
                "tokenizer_class": "GPT2Tokenizer",
                "chat_template": original.chat_template.clone().expect("chat template"),
            }))
            .with_model_config(serde_json::json!({
                "architectures": ["LlamaForCausalLM"], "vocab_size": 49152, "bos_token_id": 1, "eos_token_id": 2,
            }));
        let meta = to_gguf(&hf, None).expect("to_gguf");
        assert_eq!(meta.get(keys::PRE).and_then(GgufValue::as_str), Some("smollm"));
        assert_same_keys(&sorted(&meta), &tokenizer_kv(&file));

        let json = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/smollm2_tokens.json")).expect("read");
        let samples: Vec<Json> = serde_json::from_str(&json).expect("json");
        let texts: Vec<&str> = samples.iter().map(|s| s["text"].as_str().expect("text")).chain(SAMPLES.iter().copied()).collect();
        check_encodes_like_hf(&hf, &meta, &texts);
        let back = from_gguf(&gguf_of(&meta)).expect("from_gguf");
        for s in &samples {
            let want: Vec<u32> = s["ids"].as_array().expect("ids").iter().map(|v| v.as_u64().expect("id") as u32).collect();
            assert_eq!(back.encode(s["text"].as_str().expect("text"), false).expect("encode"), want, "llama.cpp ids of {s}");
        }
        assert_eq!(meta.end_of_generation_tokens(), vec!["<|endoftext|>".to_string(), "<|im_end|>".to_string()]);
    }

    /// The folder the `merge` node writes for a GGUF base exports with two keys fewer than the
    /// GGUF had: merge's tokenizer_config.json carries neither `unk_token` nor `add_prefix_space`.
    /// The converter itself gives the same on that folder (smollm2-merge-expected.json: its output
    /// on a merge node's folder, from scripts/gguf_tokenizer_reference.py --arch LlamaForCausalLM).
    #[test]
    fn smollm2_merge_folder_exports_all_but_unk_and_space_prefix() {
        let Some(file) = default_gguf() else { return };
        let dir = tempfile::tempdir().expect("tempdir");
        crate::nodes::merge::write_tokenizer(file.path(), dir.path()).expect("write_tokenizer");
        let config =
            serde_json::json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 49152, "bos_token_id": 1, "eos_token_id": 2});
        std::fs::write(dir.path().join("config.json"), config.to_string()).expect("write config");
        let hf = HfTokenizer::from_dir(dir.path()).expect("load");
        let names: Vec<_> = hf.files().iter().map(|p| p.file_name().expect("name").to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["tokenizer.json", "tokenizer_config.json", "config.json"]);
        let meta = to_gguf(&hf, None).expect("to_gguf");
        assert_matches_reference(&hf, &meta, &fixture_dir("smollm2-merge-expected.json"));
        let want: Vec<_> =
            tokenizer_kv(&file).into_iter().filter(|(k, _)| k != keys::UNK_ID && k != extra_keys::ADD_SPACE_PREFIX).collect();
        assert_same_keys(&sorted(&meta), &want);
    }
}
