"""FedScale client-map converter: a real-layout root (CSV maps, PNGs, WAVs) written here."""

import csv
import os
import subprocess
import sys
import wave

import numpy as np
import pytest
from PIL import Image

from data_pipelines import fedscale_csv as fc
from data_pipelines.errors import ConversionError
from fedjaxscale.data.dataset import FederatedDataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = ["client_id", "sample_path", "label_name", "label_id"]


def write_csv(root, split, rows):
  os.makedirs(os.path.join(root, "client_data_mapping"), exist_ok=True)
  with open(os.path.join(root, "client_data_mapping", f"{split}.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(HEADER)
    w.writerows(rows)


def save_png(path, array, mode):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8), mode=mode).save(path)


def save_wav(path, samples, rate=16_000, width=2):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with wave.open(path, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(width)
    w.setframerate(rate)
    w.writeframes(np.asarray(samples, "<i2").tobytes())


# --------------------------------------------------------------------------------------------
# FEMNIST: images under <root>/<sample_path> (FedScale's femnist.py joins root and path).

LABELS = {0: "0", 1: "1", 10: "A", 36: "a"}
FEMNIST_NAMES = list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


@pytest.fixture
def femnist_root(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / "femnist"
  expected = {}

  def sample(split, client, i, label):
    path = f"data/raw_data/by_write/hsf_0/{client}/c{label}/{client}_{split}_{i}.png"
    gray = rng.integers(0, 256, (28, 28))
    if i % 2:  # an RGB scan: grayscale by ITU-R 601-2 (Pillow's L), no resize needed
      rgb = rng.integers(0, 256, (28, 28, 3))
      save_png(str(root / path), rgb, "RGB")
      gray = (rgb @ [19595, 38470, 7471] + 0x8000) >> 16
    else:
      save_png(str(root / path), gray, "L")
    expected.setdefault(split, {}).setdefault(client, []).append((gray, label))
    return [client, path, LABELS[label], str(label)]

  # Client rows interleave in the CSV; clients keep first-appearance order.
  train = [
    sample("train", "f0003_41", 0, 10),
    sample("train", "f0001_07", 0, 0),
    sample("train", "f0003_41", 1, 36),
    sample("train", "f0002_11", 0, 1),
    sample("train", "f0003_41", 2, 0),
    sample("train", "f0001_07", 1, 1),
  ]
  test = [sample("test", "f0001_07", 0, 36), sample("test", "f0003_41", 0, 1)]
  write_csv(root, "train", train)
  write_csv(root, "test", test)
  return root, expected


def test_femnist_images(femnist_root, tmp_path):
  root, expected = femnist_root
  # Ids 0, 1, 10, 36 leave gaps: the CSVs cannot name classes 2..9, so pass the class list.
  names = FEMNIST_NAMES
  out = fc.convert_fedscale(str(root), str(tmp_path / "out"), label_names=names, verbose=False)
  for split in ("train", "test"):
    ds = FederatedDataset.open(tmp_path / "out" / split)
    assert ds.num_examples == out[split].num_examples
    assert list(ds.client_ids) == list(expected[split])
    assert list(ds.client_sizes) == [len(v) for v in expected[split].values()]
    assert ds.feature_specs["x"] == (np.dtype(np.uint8), (28, 28))
    assert ds.label_names == names
    for client, samples in expected[split].items():
      c = ds.client(client)
      np.testing.assert_array_equal(c["x"], np.stack([g for g, _ in samples]))
      np.testing.assert_array_equal(c["y"], [label for _, label in samples])
    prov = ds.meta["provenance"]
    assert prov["converter"] == "data_pipelines.fedscale_csv" and prov["kind"] == "image"
    assert prov["clients_filtered"] == 0


def test_resize_and_min_samples(tmp_path):
  root = tmp_path / "root"
  half = np.zeros((128, 128, 3))
  half[:, 64:] = 255  # FEMNIST's raw scans are 128x128
  rows = []
  for client, n in (("big", 3), ("small", 1)):
    for i in range(n):
      save_png(str(root / "train" / f"{client}{i}.png"), half, "RGB")
      rows.append([client, f"{client}{i}.png", "cat", "0"])
  write_csv(root, "train", rows)
  out = fc.convert_fedscale(
    str(root), str(tmp_path / "out"), splits=["train"], min_samples=2, image_size=(28, 32), verbose=False
  )
  ds = out["train"]
  assert list(ds.client_ids) == ["big"] and ds.meta["provenance"]["clients_filtered"] == 1
  x = ds.client("big")["x"]
  assert x.shape == (3, 28, 32)
  assert np.all(x[:, :, :15] == 0) and np.all(x[:, :, 17:] == 255)
  assert ds.label_names == ["cat"]


# --------------------------------------------------------------------------------------------
# Google Speech: WAVs under <root>/<split>/<sample_path> (FedScale's speech.py).


def reference_log_mel(audio, sr=16_000, mels=40, win=400, hop=160, n_fft=512):
  """A slow, loop-by-loop reading of the documented transform."""

  def mel(f):
    return 2595 * np.log10(1 + f / 700)

  pts = np.linspace(mel(0), mel(sr / 2), mels + 2)
  hz = [700 * (10 ** (p / 2595) - 1) for p in pts]
  fb = np.zeros((mels, n_fft // 2 + 1))
  for m in range(1, mels + 1):
    for k in range(n_fft // 2 + 1):
      f = k * sr / n_fft
      if hz[m - 1] <= f <= hz[m]:
        fb[m - 1, k] = (f - hz[m - 1]) / (hz[m] - hz[m - 1])
      elif hz[m] < f <= hz[m + 1]:
        fb[m - 1, k] = (hz[m + 1] - f) / (hz[m + 1] - hz[m])
  window = [0.5 - 0.5 * np.cos(2 * np.pi * n / win) for n in range(win)]
  frames = []
  for t in range(1 + (len(audio) - win) // hop):
    frame = np.zeros(n_fft)
    frame[:win] = audio[t * hop : t * hop + win] * window
    spec = np.fft.fft(frame)[: n_fft // 2 + 1]
    frames.append(np.log(fb @ (spec.real**2 + spec.imag**2) + 1e-6))
  return np.array(frames)


@pytest.fixture
def speech_root(tmp_path):
  rng = np.random.default_rng(3)
  root = tmp_path / "google_speech"
  expected = {}
  rows = {"train": [], "test": []}
  spec = [
    ("train", "0a7c2a8d", "yes", 4, 16_000),
    ("train", "0a7c2a8d", "no", 9, 12_000),
    ("train", "b0ae6326", "yes", 4, 20_000),
    ("test", "c1d39ce8", "no", 9, 16_000),
  ]
  for i, (split, speaker, word, label, length) in enumerate(spec):
    pcm = rng.integers(-20000, 20000, length)
    path = f"{word}/{speaker}_nohash_{i}.wav"
    save_wav(str(root / split / path), pcm)
    clip = np.zeros(16_000)
    clip[: min(length, 16_000)] = pcm[:16_000] / 32768.0
    expected.setdefault(split, {}).setdefault(speaker, []).append((clip, label))
    rows[split].append([speaker, path, word, str(label)])
  for split, r in rows.items():
    write_csv(root, split, r)
  return root, expected


def test_speech_log_mel(speech_root, tmp_path):
  root, expected = speech_root
  names = ["up", "two", "sheila", "zero", "yes", "five", "one", "happy", "marvin", "no"]
  out = fc.convert_fedscale(str(root), str(tmp_path / "out"), label_names=names, verbose=False)
  for split in ("train", "test"):
    ds = FederatedDataset.open(tmp_path / "out" / split)
    assert ds.num_examples == out[split].num_examples
    assert list(ds.client_ids) == list(expected[split])
    assert ds.feature_specs["x"] == (np.dtype(np.float32), (98, 40))
    assert ds.meta["provenance"]["kind"] == "audio"
    for speaker, samples in expected[split].items():
      c = ds.client(speaker)
      np.testing.assert_array_equal(c["y"], [label for _, label in samples])
      for got, (clip, _) in zip(c["x"], samples):
        np.testing.assert_allclose(got, reference_log_mel(clip), rtol=2e-4, atol=2e-3)


def test_mel_filterbank_and_tone():
  fb = fc.mel_filterbank(40, 512, 16_000)
  assert fb.shape == (40, 257) and fb.min() == 0 and fb.max() <= 1
  assert np.all(fb.sum(axis=1) > 0)
  t = np.arange(16_000) / 16_000
  feats = fc.log_mel(np.sin(2 * np.pi * 1000 * t)[None])[0]
  band = int(np.argmax(feats.mean(axis=0)))
  assert fb[band, round(1000 * 512 / 16_000)] > 0.5  # the loudest band is the one at 1 kHz


def test_wav_formats(tmp_path):
  save_wav(str(tmp_path / "a.wav"), [0, 16384, -32768])
  np.testing.assert_array_equal(fc.decode_wav(str(tmp_path / "a.wav"), 16_000, 5), [0, 0.5, -1, 0, 0])
  save_wav(str(tmp_path / "b.wav"), [0, 1], rate=8000)
  with pytest.raises(ValueError, match="sample rate 8000 Hz"):
    fc.decode_wav(str(tmp_path / "b.wav"), 16_000, 5)


# --------------------------------------------------------------------------------------------
# Bad input.


def test_label_names_from_csv_and_their_errors(tmp_path):
  root = tmp_path / "r"
  for i in range(3):
    save_png(str(root / "train" / f"{i}.png"), np.zeros((28, 28)), "L")
  write_csv(root, "train", [["a", "0.png", "cat", "1"], ["b", "1.png", "dog", "0"], ["a", "2.png", "cat", "1"]])
  ds = fc.convert_fedscale(str(root), str(tmp_path / "o"), splits=["train"], verbose=False)["train"]
  assert ds.label_names == ["dog", "cat"]
  np.testing.assert_array_equal(ds.features["y"], [1, 1, 0])  # a's rows, then b's
  csv_file = r"client_data_mapping[/\\]train\.csv"

  write_csv(root, "train", [["a", "0.png", "cat", "1"], ["b", "1.png", "dog", "1"]])
  with pytest.raises(
    ConversionError,
    match=csv_file + r" line 3: label_id 1 is named 'dog',"
    r" but .*line 2 names it 'cat'",
  ):
    fc.convert_fedscale(str(root), str(tmp_path / "o2"), splits=["train"], verbose=False)
  write_csv(root, "train", [["a", "0.png", "cat", "1"], ["b", "1.png", "cat", "0"]])
  with pytest.raises(
    ConversionError,
    match=csv_file + r" line 3: label_name 'cat' has "
    r"label_id 0, but .*line 2 gives it 1",
  ):
    fc.convert_fedscale(str(root), str(tmp_path / "o2"), splits=["train"], verbose=False)
  write_csv(root, "train", [["a", "0.png", "cat", "0"], ["b", "1.png", "dog", "2"]])
  with pytest.raises(ConversionError, match=r"no row has label_id 1"):
    fc.convert_fedscale(str(root), str(tmp_path / "o2"), splits=["train"], verbose=False)
  write_csv(root, "train", [["a", "0.png", "cat", "0"], ["b", "1.png", "dog", "5"]])
  with pytest.raises(
    ConversionError,
    match=csv_file + r" line 3: label_id 5 is outside the 2 "
    "classes",
  ):
    fc.convert_fedscale(str(root), str(tmp_path / "o2"), splits=["train"], label_names=["cat", "dog"], verbose=False)
  write_csv(root, "train", [["a", "0.png", "cat", "one"]])
  with pytest.raises(
    ConversionError,
    match=csv_file + r" line 2: label_id 'one' is not an "
    "integer",
  ):
    fc.convert_fedscale(str(root), str(tmp_path / "o2"), splits=["train"], verbose=False)
  assert not os.path.exists(tmp_path / "o2")


def test_missing_sample_file_names_csv_row_and_path(femnist_root, tmp_path):
  root, _ = femnist_root
  rows = list(csv.reader(open(root / "client_data_mapping" / "test.csv")))
  rows[2][1] = "data/raw_data/by_write/hsf_0/f0003_41/c1/gone.png"
  write_csv(root, "test", rows[1:])
  with pytest.raises(
    ConversionError,
    match=r"test\.csv line 3: sample file .*test[/\\]data.*"
    r"gone\.png or .*femnist[/\\]data.*gone\.png is missing",
  ):
    fc.convert_fedscale(str(root), str(tmp_path / "out"), label_names=FEMNIST_NAMES, verbose=False)
  assert not os.path.exists(tmp_path / "out")  # checked before any split was written


def test_undecodable_sample_and_bad_header(tmp_path):
  root = tmp_path / "r"
  os.makedirs(root / "train")
  (root / "train" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  write_csv(root, "train", [["a", "bad.png", "cat", "0"]])
  with pytest.raises(ConversionError, match=r"train\.csv line 2: cannot decode .*bad\.png"):
    fc.convert_fedscale(str(root), str(tmp_path / "o"), splits=["train"], verbose=False)
  with open(root / "client_data_mapping" / "train.csv", "w") as f:
    f.write("client,path,label\na,bad.png,0\n")
  with pytest.raises(
    ConversionError,
    match=r"train\.csv: header .* lacks column\(s\) "
    r"\['client_id', 'sample_path', 'label_name', 'label_id'\]",
  ):
    fc.convert_fedscale(str(root), str(tmp_path / "o"), splits=["train"], verbose=False)
  write_csv(root, "train", [["a", "bad.png", "cat", "0"]])
  with pytest.raises(ConversionError, match=r"test\.csv: missing"):
    fc.convert_fedscale(str(root), str(tmp_path / "o"), verbose=False)


def test_existing_output_needs_overwrite(speech_root, tmp_path):
  root, _ = speech_root
  names = ["no"] * 4 + ["yes"] + ["x"] * 4 + ["no"]
  out = str(tmp_path / "out")
  fc.convert_fedscale(str(root), out, splits=["test"], label_names=names, verbose=False)
  before = open(os.path.join(out, "test", "x.npy"), "rb").read()
  with pytest.raises(ConversionError, match=r"test: already holds a dataset"):
    fc.convert_fedscale(str(root), out, label_names=names, verbose=False)
  assert not os.path.exists(os.path.join(out, "train"))
  assert open(os.path.join(out, "test", "x.npy"), "rb").read() == before
  fc.convert_fedscale(str(root), out, label_names=names, overwrite=True, verbose=False)


def test_cli(tmp_path):
  root = tmp_path / "r"
  rows = []
  for client, n in (("a", 3), ("b", 1)):
    for i in range(n):
      save_png(str(root / "train" / f"{client}{i}.png"), np.full((28, 28), i), "L")
      rows.append([client, f"{client}{i}.png", "cat" if i % 2 else "dog", str(i % 2)])
  write_csv(root, "train", rows)
  cmd = [
    sys.executable,
    "-m",
    "data_pipelines.fedscale_csv",
    f"--root={root}",
    f"--output_dir={tmp_path / 'out'}",
    "--splits=train",
    "--min_samples=2",
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert "train: 1 clients / 3 examples / 2 classes (1 clients under 2 samples filtered)" in done.stdout
  os.remove(root / "train" / "a1.png")
  done = subprocess.run(cmd + ["--overwrite"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 2
  assert "train.csv line 3: sample file" in done.stderr and "a1.png" in done.stderr
  assert "Traceback" not in done.stderr
