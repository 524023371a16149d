"""The citations of a card, keyed by the methods a run used.

    citations_for(["k-center", "top-ifd"])   # BibTeX of SRT, IFD (Cherry) and DiverseEvol, each once
    citations_for(run_methods(meta))          # what run.json's ``methods`` records (older runs: inferred)

Every card cites the method srt-hf implements and the score it rests on (ALWAYS); a run adds the keys of
what else it did. Writers of run.json record ``methods`` with the keys of METHODS.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from .common import as_dict

# BibTeX entries by citation key, in the order the cards list them.
BIBTEX = {
    "li2024selective": """@inproceedings{li2024selective,
  title     = {Selective Reflection-Tuning: Student-Selected Data Recycling for {LLM} Instruction-Tuning},
  author    = {Li, Ming and Chen, Lichang and Chen, Jiuhai and He, Shwai and Gu, Jiuxiang and Zhou, Tianyi},
  booktitle = {Findings of the Association for Computational Linguistics: ACL 2024},
  year      = {2024}
}""",
    "li2024quantity": """@inproceedings{li2024quantity,
  title     = {From Quantity to Quality: Boosting {LLM} Performance with Self-Guided Data Selection for Instruction Tuning},
  author    = {Li, Ming and Zhang, Yong and Li, Zhitao and Chen, Jiuhai and Chen, Lichang and Cheng, Ning and Wang, Jianzong and Zhou, Tianyi and Xiao, Jing},
  booktitle = {Proceedings of the 2024 Conference of the North American Chapter of the Association for Computational Linguistics (NAACL)},
  year      = {2024}
}""",
    "li2023reflection": """@article{li2023reflection,
  title   = {Reflection-Tuning: Data Recycling Improves {LLM} Instruction-Tuning},
  author  = {Li, Ming and Chen, Lichang and Chen, Jiuhai and He, Shwai and Huang, Heng and Gu, Jiuxiang and Zhou, Tianyi},
  journal = {arXiv preprint arXiv:2310.11716},
  year    = {2023}
}""",
    "li2024superfiltering": """@inproceedings{li2024superfiltering,
  title     = {Superfiltering: Weak-to-Strong Data Filtering for Fast Instruction-Tuning},
  author    = {Li, Ming and Zhang, Yong and He, Shwai and Li, Zhitao and Zhao, Hongyu and Wang, Jianzong and Cheng, Ning and Zhou, Tianyi},
  booktitle = {Proceedings of the 62nd Annual Meeting of the Association for Computational Linguistics (ACL)},
  year      = {2024}
}""",
    "wu2023diverseevol": """@article{wu2023diverseevol,
  title   = {Self-Evolved Diverse Data Sampling for Efficient Instruction Tuning},
  author  = {Wu, Shengguang and Lu, Keming and Xu, Benfeng and Lin, Junyang and Su, Qi and Zhou, Chang},
  journal = {arXiv preprint arXiv:2311.08182},
  year    = {2023}
}""",
    "jiang2024importance": """@article{jiang2024importance,
  title   = {Importance Weighting Can Help Large Language Models Self-Improve},
  author  = {Jiang, Chunyang and Chan, Chi-Min and Xue, Wei and Liu, Qifeng and Guo, Yike},
  journal = {arXiv preprint arXiv:2408.09849},
  year    = {2024}
}""",
    "vonwerra2020trl": """@misc{vonwerra2020trl,
  title        = {{TRL}: Transformer Reinforcement Learning},
  author       = {von Werra, Leandro and Belkada, Younes and Tunstall, Lewis and Beeching, Edward and Thrush, Tristan and Lambert, Nathan and Huang, Shengyi and Rasul, Kashif and Gallou{\\'e}dec, Quentin},
  year         = {2020},
  howpublished = {\\url{https://github.com/huggingface/trl}}
}""",
}

# Method key -> the BibTeX keys that describe it.
METHODS: dict[str, tuple[str, ...]] = {
    "selective-reflection-tuning": ("li2024selective",),
    "reflection-tuning": ("li2023reflection",),
    "ifd": ("li2024quantity",),
    "top-ifd": ("li2024quantity",),
    "superfiltering": ("li2024superfiltering",),
    "diverse-evol": ("wu2023diverseevol",),
    "k-center": ("wu2023diverseevol",),
    "ds-weight": ("jiang2024importance",),
    "sft": ("vonwerra2020trl",),
}
ALWAYS = ("selective-reflection-tuning", "ifd")


def citations_for(methods: Iterable[str]) -> list[str]:
    """The BibTeX entries of ``methods`` (plus ALWAYS), each once, in BIBTEX order; unknown keys cite nothing."""
    wanted = {bib for m in (*ALWAYS, *methods) for bib in METHODS.get(m, ())}
    return [entry for key, entry in BIBTEX.items() if key in wanted]


def run_methods(meta: Mapping[str, Any]) -> list[str]:
    """The method keys of a run: run.json's ``methods``, or for a run.json written before it was recorded,
    what its kind, scoring preset and selection rule imply."""
    recorded = meta.get("methods")
    if isinstance(recorded, list) and all(m in METHODS for m in recorded):
        return list(recorded)
    return _inferred_methods(meta)


# Old run.json files: words of scoring.preset / selection.rule, and the citation keys ``methods`` then held.
_LEGACY_WORDS = {
    "superfiltering": ("superfilter",),
    "diverse-evol": ("diverse", "kcenter", "k-center", "k_center"),
    "ds-weight": ("dsweight", "ds_weight", "ds-weight", "importance"),
}
_LEGACY_KEYS = {"srt": "selective-reflection-tuning", "reflection_tuning": "reflection-tuning", "ifd": "ifd",
                "superfiltering": "superfiltering", "diverse_evol": "diverse-evol", "ds_weight": "ds-weight", "trl": "sft"}


def _inferred_methods(meta: Mapping[str, Any]) -> list[str]:
    keys = list(ALWAYS)
    if meta.get("kind", "recycle") == "recycle":
        keys.append("reflection-tuning")
    words = (as_dict(meta.get("scoring"), "preset").get("preset"), as_dict(meta.get("selection"), "rule").get("rule"))
    text = " ".join(str(w) for w in words if w).lower()
    keys += [key for key, stems in _LEGACY_WORDS.items() if any(s in text for s in stems)]
    keys += [_LEGACY_KEYS[m] for m in meta.get("methods") or [] if m in _LEGACY_KEYS]
    return list(dict.fromkeys(keys))
