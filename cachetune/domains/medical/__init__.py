"""The built-in ``medical`` domain: consumer health questions (MedQuAD).

Reads a MedQuAD download (a folder of ``<Document>`` XML files, any depth: the 12 source
subfolders), keeping each question's ``qtype`` and the document's ``Focus``; or a hub copy of
MedQuAD with a ``question`` column. Ships a small hand-written sample for offline runs. The
split keeps all questions about one focus (the disease, drug or topic of a document) on one side.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

from cachetune import hookimpl
from cachetune.core.types import Domain, FewShotExample, PromptTemplates, QueryRecord, SourceReader
from cachetune.core.errors import CachetuneError
from cachetune.core.data.sources import load_hub_dataset, looks_like_hub_id, split_hub_id
from cachetune.domains.medical.evaluation import EVALUATION_SETS
from cachetune.domains.medical.training import TRAINING_SETS

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
        # The split's group: a document without a focus is its own group.
        focus = (document.findtext("Focus") or document.findtext("doctitle-focus") or "").strip() or str(rel)
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
        meta = {k: row[k] for k in ("qtype", "source") if k in row and row[k] is not None}
        if row.get("focus_area"):
            meta["focus"] = row["focus_area"]
        yield QueryRecord(row.get(column), f"{source}#{index}", meta)


PROMPTS = PromptTemplates(
    system=(
        "You rewrite consumer health questions for a semantic cache. A paraphrase asks exactly the same "
        "thing in different words, so the same answer applies. A hard negative names the same condition, "
        "drug or body part but asks something else (a different symptom, treatment, cause, population or "
        "condition), so the original answer would be wrong for it. Reply with one JSON object and nothing else."
    ),
    # Measured against the first version on 16 MedQuAD queries with Qwen2.5-Coder-0.5B: naming the
    # kind of question to keep, and MedQuAD-shaped examples, took paraphrases that keep the question
    # type and condition from 48% to 76% and negatives that really differ from 50% to 72%.
    paraphrase_instruction=(
        "Write {n} paraphrases of this question: the same question in other words. Keep the condition or "
        "drug and the kind of question (what it is, symptoms, causes, treatment, outlook, ...) exactly.\n"
        "Question: {query}"
    ),
    negative_instruction=(
        "Write {n} hard negatives for this question. A hard negative swaps ONE thing: the kind of question "
        "(symptoms -> treatment, causes -> outlook, what it is -> how it is diagnosed) or the condition or drug "
        "for a related one, so that the original answer would be wrong. A rewording that means the same is NOT "
        "a negative.\nQuestion: {query}"
    ),
    examples=(
        FewShotExample(
            "What is (are) Restless legs syndrome ?",
            ["Can you explain what restless legs syndrome is?", "What does restless legs syndrome mean?",
             "Give me an overview of restless legs syndrome"],
            ["What causes restless legs syndrome?", "How is restless legs syndrome treated?"],
        ),
        FewShotExample(
            "What are the symptoms of Lyme disease ?",
            ["What signs and symptoms does Lyme disease cause?", "How can I tell if I have Lyme disease?",
             "Which symptoms are typical of Lyme disease?"],
            ["How is Lyme disease diagnosed?", "What are the symptoms of babesiosis?"],
        ),
        FewShotExample(
            "What are the side effects of Metformin ?",
            ["What unwanted effects can metformin cause?", "Which side effects does metformin have?",
             "What adverse reactions are linked to taking metformin?"],
            ["What should I do if I forget a dose of metformin?", "What are the side effects of insulin?"],
        ),
        FewShotExample(
            "Is hemophilia inherited ?",
            ["Can hemophilia be passed down from parents to children?", "Does hemophilia run in families?",
             "Is hemophilia a hereditary condition?"],
            ["How is hemophilia treated?", "Is von Willebrand disease inherited?"],
        ),
    ),
    # all-MiniLM-L6-v2 scores health questions by their condition more than by what they ask:
    # rewordings that changed the question type scored 0.6-0.8, true paraphrases mostly above 0.8,
    # and negatives that merely restate the question 0.88 and up.
    paraphrase_floor=0.8,
    negative_ceiling=0.88,
)

DOMAIN = Domain(
    name="medical",
    description="Consumer health questions (MedQuAD)",
    default_source=DATA / "sample_queries.txt",
    prompts=PROMPTS,
    evaluation_sets=EVALUATION_SETS,
    training_sets=TRAINING_SETS,
    readers=(
        SourceReader("medquad-hub", is_medquad_hub, read_medquad_hub, "a MedQuAD copy on the dataset hub"),
        SourceReader("medquad-folder", is_medquad_folder, read_medquad_folder, "a MedQuAD folder of XML documents"),
    ),
    min_chars=10,
    max_chars=400,
    group_field="focus",
)


# tryfirst: a built-in keeps its names unless a plugin's hook is tryfirst too (core/plugin_manager.py)
@hookimpl(tryfirst=True)
def register_domains(register):
    register(DOMAIN)
