"""The model card: built from a model's own files and the evaluate/ingest reports, honest about its data."""

from ferops.constants import EMOTIONS
from ferops.modelcard import DESCRIPTION_MAX, model_card

VAL = {"val_accuracy": 0.667, "val_macro_f1": 0.65, "n_params": 2_801_063, "epochs_run": 38, "best_epoch": 34,
       "train_wall_s": 3403, "precision": "mixed_bfloat16",
       **{f"val_{m}_{e.lower()}": 0.6 for m in ("precision", "recall", "f1") for e in EMOTIONS},
       "val_recall_disgust": 0.41, "val_recall_fear": 0.48}
INGEST = {"synthetic": False, "source": "data/raw/fer2013.csv.gz", "sha256": "1a115748913f786e",
          "per_usage": {"Training": 28709, "PublicTest": 3589, "PrivateTest": 3589},
          "per_class": {"Angry": 4953, "Disgust": 547, "Fear": 5121, "Happy": 8989, "Sad": 6077, "Surprise": 4002,
                        "Neutral": 6198}}
TEST = {"test_accuracy": 0.6829, "test_macro_f1": 0.6704, "test_accuracy_tta": 0.7027, "test_macro_f1_tta": 0.6951,
        "test_ece": 0.0308,
        "test_ece_single": 0.106, "val_accuracy_tta": 0.696, "test_n_seen": 259, "test_accuracy_unseen": 0.654,
        "test_accuracy_tta_unseen": 0.684}
CONFIG = {"arch": "resnet", "stages": [2, 2, 2, 2], "widths": [32, 64, 128, 256]}


def card(**kw):
    args = dict(name="fer2013-resnet", version="3", model="resnet", config=CONFIG, metrics=VAL, test=TEST,
                ingest=INGEST, tta="tencrop", git_commit="c1be0a2deadbeef")
    return model_card(**{**args, **kw})


def test_card_states_model_data_selection_and_figures():
    c = card()
    assert c.startswith("# fer2013-resnet v3: facial-expression classifier")
    assert "`resnet` (architecture `resnet`, stages [2, 2, 2, 2], widths [32, 64, 128, 256]), 2.80 M parameters; 38 epochs (best 34) in 57 min" in c
    assert "train 28709 rows, validation = PublicTest 3589, test = PrivateTest 3589" in c
    assert "never used to choose" in c and "`c1be0a2deadb`" in c
    assert "| test (PrivateTest), single pass | 68.29 % | 67.04 % |" in c
    # every row names its split and its predictions; val with the served mode, which chose it, beside test's
    assert "| validation (PublicTest), single pass | 66.70 % | 65.00 % |" in c
    assert "| validation (PublicTest), test-time augmentation `tencrop` | 69.60 % | – |" in c
    assert "| test (PrivateTest), test-time augmentation `tencrop` | 70.27 % | 69.51 % |" in c
    # test images that are copies of training images are named, with the accuracy on the others
    assert ("259 test (PrivateTest) images are exact copies of training images, which the model scores far better "
            "(it trained on them); on the other test images it reaches 68.40 % with `tencrop`") in c
    assert "exact copies" not in card(test={**TEST, "test_n_seen": 0})
    assert "| Disgust | 60.00 % | 41.00 % | 60.00 % |" in c
    assert "the probabilities with `tencrop` (what `ferops predict` and a REST request with `tta: auto` get) are off " \
           "from the accuracy they achieve by 3.1 points" in c and "evaluation/resnet/calibration_test.png" in c
    assert "a plain REST request (single pass) gets probabilities off by 10.6 points" in c
    alike = card(test={**TEST, "test_ece": 0.034, "test_ece_single": 0.0341})  # equal as shown: not a contrast
    assert "a plain REST request (single pass) gets probabilities off by as much." in alike
    # its own weakest classes and the rarest class, from the figures given
    assert "Weakest classes by validation recall (single pass): Disgust (41 %), Fear (48 %)" in c
    assert "Per class, on validation, single pass:" in c
    assert "- **Code**: trained at git commit `c1be0a2deadb`." in c  # without a code fingerprint given
    assert "serves with the ferops code registered with it (`code_sha256` `0123abcd`)" in card(code="0123abcd")
    assert "Disgust is 1.5 % of the labelled rows" in c
    # a tie is named whole, and a balanced set has no "least data" class (min() named the first of a tie: Angry)
    tie = card(ingest={**INGEST, "per_class": {**INGEST["per_class"], "Angry": 547}})
    assert "Angry and Disgust are each 1.7 % of the labelled rows: the least data" in tie
    balanced = card(ingest={**INGEST, "per_class": dict.fromkeys(EMOTIONS, 40)})
    assert "Every class is 14.3 % of the labelled rows." in balanced and "least data" not in balanced
    assert '(without it the whole image is taken as one face)' in c  # the REST default: crop_face false


def test_card_says_how_the_served_probabilities_were_calibrated():
    c = card(test={**TEST, "test_ece_raw": 0.036, "test_ece_single_raw": 0.121},
             temperatures={"none": 1.29, "flip": 1.2, "tencrop": 1.01})
    # each raw ECE names its mode: the served mode's alone read as if scaling had worsened the single pass's
    assert ("divided, as logits, by a temperature fitted on validation (temperature scaling: 1.29 for the single "
            "pass and 1.01 with `tencrop`; a label never changes); unscaled, the ECE was 12.1 points for the single "
            "pass and 3.6 points with `tencrop`.") in c
    assert "temperature" not in card()  # a version registered without them serves raw probabilities, and says nothing


def test_card_claims_no_scaling_when_neither_served_mode_has_a_temperature():
    # an eval_temperatures tag for another mode only (`shift`): the single pass and `tencrop` are served raw
    for test in (TEST, {}):
        c = card(test={**test, "test_ece_raw": 0.036} if test else {}, temperatures={"shift": 1.1})
        assert "temperature" not in c and "Calibration:\n" not in c + "\n"


def test_card_training_time_reads_right_at_any_length():
    for seconds, text in ((21, "in 21 s"), (3403, "in 57 min"), (5574, "in 1 h 33 min")):
        assert f"38 epochs (best 34) {text}, mixed_bfloat16." in card(metrics={**VAL, "train_wall_s": seconds})


def test_card_gives_an_ensembles_epochs_per_member():
    # an ensemble's metrics.json: epochs_run is the members' sum, no best_epoch, m<i>_ figures per member
    ens = {k: v for k, v in VAL.items() if k != "best_epoch"} | {
        "epochs_run": 61, "n_members": 2, "m1_epochs_run": 31, "m1_best_epoch": 27, "m2_epochs_run": 30,
        "m2_best_epoch": 25}
    c = card(metrics=ens, config={**CONFIG, "ensemble_seeds": [42, 7]})
    assert "an average of 2 members (seeds [42, 7])), 2.80 M parameters; 31 + 30 epochs, one member after the " \
           "other (best 27, 25) in 57 min" in c
    assert "best ?" not in c


def test_card_without_tta_or_per_class_figures_and_on_the_demo_set():
    c = card(tta="none", metrics={"val_accuracy": 0.9}, ingest={"synthetic": True})
    assert "test-time augmentation" not in c.split("## Accuracy")[1].split("## Use")[0]
    assert "Per class" not in c and "Weakest" not in c
    assert "**Synthetic demo faces**" in c and "say nothing about real faces" in c
    assert "| validation, single pass | 90.00 % | – |" in c and "PublicTest" not in c  # the demo set has no PublicTest


def test_card_fits_the_registry_description():
    c = card(config={**CONFIG, "widths": list(range(5000))})
    assert len(c) <= DESCRIPTION_MAX and c.endswith("…(cut)\n")


def test_card_names_public_and_private_test_only_for_the_usage_split():
    carved = card(split={"strategy": "usage", "val_carved_from_train": 2871,
                         "n": {"train": 25838, "val": 2871, "test": 7178}})
    assert "train 25838 rows, validation 2871, test 7178: validation carved from the training rows" in carved
    assert "| validation, single pass | 66.70 %" in carved and "| test, single pass | 68.29 %" in carved
    assert "PublicTest" not in carved and "PrivateTest" not in carved
    usage = card(split={"strategy": "usage", "val_carved_from_train": 0,
                        "n": {"train": 28698, "val": 3589, "test": 3589}})  # e.g. after split.drop_blank
    assert "train 28698 rows, validation = PublicTest 3589, test = PrivateTest 3589" in usage
    # the demo set and an image folder's val/ and test/ have a usage split too, but no PublicTest or PrivateTest
    n = {"strategy": "usage", "val_carved_from_train": 0, "n": {"train": 2450, "val": 525, "test": 525}}
    demo = card(split=n, ingest={**INGEST, "synthetic": True, "format": "synthetic"})
    folders = card(split=n, ingest={**INGEST, "format": "folders"})
    assert "| validation, single pass | 66.70 %" in demo and "| test, single pass | 68.29 %" in demo
    assert "validation 525, test 525: the dataset's own train, validation and test rows" in folders
    assert not [c for c in (demo, folders) if "PublicTest" in c or "PrivateTest" in c]


def test_card_names_no_weakest_class_that_validation_has_no_rows_of():
    # a small stratified split can leave a rare class out of val: its recall is 0 by convention, not a weakness
    split = {"strategy": "stratified", "n": {"train": 800, "val": 100, "test": 100},
             "per_class": {"val": {e: (0 if e == "Disgust" else 15) for e in EMOTIONS}}}
    c = card(split=split, metrics={**VAL, "val_recall_disgust": 0.0, "val_f1_disgust": 0.0})
    assert "Weakest classes by validation recall (single pass): Fear (48 %), Angry (60 %)" in c
    assert "| Disgust | 60.00 % | – | 0.00 % |" in c
    assert "| Fear | 60.00 % | 48.00 % | 60.00 % |" in c
    assert "Weakest classes by validation recall (single pass): Disgust (41 %)" in card()  # a class val has: named as before


def test_card_says_whether_the_tta_mode_was_chosen_on_validation_or_set():
    """`evaluate.tta: auto` chooses the mode on val; a fixed `evaluate.tta: flip` is the user's choice, and the card
    said "chosen on validation" for it too."""
    assert "and the test-time augmentation mode were chosen on validation too" in card()
    fixed = card(tta="flip", tta_chosen=False)
    assert "chosen on validation too" not in fixed
    assert "the test-time augmentation mode, `flip`, was set in params.yaml `evaluate.tta`" in fixed
