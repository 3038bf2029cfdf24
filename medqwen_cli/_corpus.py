"""A fixed English + radiology corpus to train the tiny presets' tokenizer (deterministic)."""

from __future__ import annotations

_WORDS = """
the a an of in on at to and or with without is are was were be been there this that these those
what where which how many much does do is it no yes not normal abnormal present absent seen
image images scan study view shows show showing seen visible noted identified evidence of
left right upper lower middle central peripheral anterior posterior medial lateral bilateral
small large medium tiny single multiple one two three four five six seven eight nine ten zero
chest lung lungs heart cardiac mediastinum pleural effusion pneumothorax consolidation opacity
nodule nodules mass masses lesion lesions cyst cysts tumor tumour calcification fracture edema
atelectasis cardiomegaly infiltrate emphysema fibrosis hemorrhage haemorrhage infarct stroke
liver kidney spleen pancreas bowel bladder brain skull spine bone bones joint vessel vessels
retina fundus optic disc macula exudate exudates microaneurysm microaneurysms drusen vessel
tissue cells cell nucleus nuclei stroma gland glands tumor carcinoma benign malignant mitosis
radiograph radiography x-ray xray ct mri mr ultrasound fundus photograph pathology slide histology
modality modalities axial coronal sagittal slice contrast enhanced enhancing t1 t2 flair weighted
finding findings impression report summary comparison history indication technique
unremarkable stable increased decreased mild moderate severe diffuse focal round oval irregular
density intensity signal hyperintense hypointense hyperdense hypodense bright dark area region
patient clinical diagnosis diagnostic class label category grade stage type question answer
quadrant lobe hemisphere ventricle cortex white matter grey gray matter field margin border
the image is a chest radiograph the lungs are clear no acute finding there is a small nodule
"""


def corpus_lines() -> list[str]:
    words = _WORDS.split()
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    sentences = [
        "What imaging modality is this? It is a CT scan.",
        "Is there a nodule in the left upper lung? Yes, there is a small nodule.",
        "How many lesions are visible? Two lesions are visible.",
        "Findings: no pleural effusion. Impression: normal chest radiograph.",
        "Where is the lesion located? The lesion is in the right lower quadrant.",
        "Is the heart enlarged? No. The cardiac silhouette is normal.",
        "0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 mm cm %",
        "User: describe the image. Assistant: the image shows ...",
    ]
    return (lines + sentences) * 4
