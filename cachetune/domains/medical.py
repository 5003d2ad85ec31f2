"""The built-in ``medical`` domain: consumer health questions (MedQuAD).

Reads a MedQuAD download (a folder of ``<Document>`` XML files, any depth: the 12 source
subfolders), keeping each question's ``qtype`` and the document's ``Focus``; or a hub copy of
MedQuAD with a ``question`` column. Ships a small hand-written sample for offline runs.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

from cachetune import hookimpl
from cachetune.core.domain import Domain, FewShotExample, PromptTemplates, QueryRecord, SourceReader
from cachetune.core.errors import CachetuneError
from cachetune.core.sources import load_hub_dataset, looks_like_hub_id, split_hub_id
from cachetune.domains.medical_eval import EVALUATION_SETS

DATA = Path(__file__).parent / "data"
# Hub copies of MedQuAD and the column holding the question.
MEDQUAD_HUB_IDS = {"lavita/MedQuAD": "question", "keivalya/MedQuad-MedicalQnADataset": "Question"}


# The release is mostly <Document>/QAPairs/QAPair/Question; a few files (NINDS, CDC) use the
# older <doc>/qaPairs/pair/question or <DiseaseFile> layouts, read the same way.
DOCUMENT_TAGS = {"Document", "DiseaseFile", "doc"}


def is_medquad_folder(source: str) -> bool:
    path = Path(source)
    return path.is_dir() and next(path.rglob("*.xml"), None) is not None


def read_medquad_folder(source: str, options: dict) -> Iterator[QueryRecord]:
    root = Path(source)
    for xml_file in sorted(root.rglob("*.xml")):
        rel = xml_file.relative_to(root)
        try:
            document = ET.parse(xml_file).getroot()
        except ET.ParseError as exc:
            raise CachetuneError(f"invalid XML: {exc}", xml_file, exc.position[0]) from None
        if document.tag not in DOCUMENT_TAGS:
            if document.tag.startswith("RQE"):
                continue  # RQE pair files sometimes sit beside MedQuAD; they are not documents
            raise CachetuneError(f"not a MedQuAD document (root <{document.tag}>, expected <Document>)", xml_file)
        focus = (document.findtext("Focus") or document.findtext("doctitle-focus") or "").strip()
        subset = rel.parts[0] if len(rel.parts) > 1 else document.get("source", "")
        for question in document.iter():
            if question.tag.lower() != "question":
                continue
            yield QueryRecord(
                question.text,
                f"{xml_file}",
                {"qtype": question.get("qtype", ""), "focus": focus, "qid": question.get("qid", ""),
                 "source": subset},
            )


def is_medquad_hub(source: str) -> bool:
    return looks_like_hub_id(source) and split_hub_id(source)[0] in MEDQUAD_HUB_IDS


def read_medquad_hub(source: str, options: dict) -> Iterator[QueryRecord]:
    name, _ = split_hub_id(source)
    dataset = load_hub_dataset(source, options.get("split", "train"))
    column = MEDQUAD_HUB_IDS[name]
    for index, row in enumerate(dataset):
        meta = {k: row[k] for k in ("qtype", "focus_area", "source") if k in row and row[k] is not None}
        yield QueryRecord(row.get(column), f"{source}#{index}", meta)


PROMPTS = PromptTemplates(
    system=(
        "You rewrite consumer health questions for a semantic cache. A paraphrase asks exactly the same "
        "thing in different words, so the same answer applies. A hard negative names the same condition, "
        "drug or body part but asks something else (a different symptom, treatment, cause, population or "
        "condition), so the original answer would be wrong for it. Reply with one JSON object and nothing else."
    ),
    paraphrase_instruction="Write {n} paraphrases of this question. Keep every detail; change the wording.\nQuestion: {query}",
    negative_instruction=(
        "Write {n} hard negatives for this question: same condition or drug, but asking something whose "
        "answer is different.\nQuestion: {query}"
    ),
    examples=(
        FewShotExample(
            "What are the symptoms of type 2 diabetes?",
            ["How can I tell if I have type 2 diabetes?", "What signs does type 2 diabetes cause?",
             "Which symptoms point to type 2 diabetes?"],
            ["How is type 2 diabetes treated?", "What are the symptoms of type 1 diabetes?"],
        ),
        FewShotExample(
            "Is ibuprofen safe to take during pregnancy?",
            ["Can pregnant women take ibuprofen?", "Is it OK to use ibuprofen while pregnant?",
             "Does taking ibuprofen in pregnancy carry risks?"],
            ["Is ibuprofen safe while breastfeeding?", "Is acetaminophen safe to take during pregnancy?"],
        ),
        FewShotExample(
            "What causes migraines?",
            ["Why do people get migraine headaches?", "What triggers a migraine?",
             "What is the cause of migraines?"],
            ["How are migraines treated?", "What causes cluster headaches?"],
        ),
    ),
)

DOMAIN = Domain(
    name="medical",
    description="Consumer health questions (MedQuAD)",
    default_source=DATA / "medical_queries.txt",
    prompts=PROMPTS,
    evaluation_sets=EVALUATION_SETS,
    readers=(
        SourceReader("medquad-hub", is_medquad_hub, read_medquad_hub, "a MedQuAD copy on the dataset hub"),
        SourceReader("medquad-folder", is_medquad_folder, read_medquad_folder, "a MedQuAD folder of XML documents"),
    ),
    min_chars=10,
    max_chars=400,
)


@hookimpl
def register_domains(register):
    register(DOMAIN)
