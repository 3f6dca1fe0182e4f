"""Flickr30k Entities on-disk format: read and write.

Layout under a dataset root (the real dataset's, so real data loads as is):

    flickr30k-images/<id>.jpg          the image
    Sentences/<id>.txt                 one caption a line, phrases marked up as
                                       ``[/EN#<chain>/<type>[/<type>...] phrase text]``
    Annotations/<id>.xml               VOC-style: ``<object>`` with one or more ``<name>``
                                       (chain ids) and ``<bndbox>`` xmin/ymin/xmax/ymax,
                                       or ``<nobndbox>1</nobndbox>`` / ``<scene>1</scene>``
    train.txt / val.txt / test.txt     image ids of each split, one a line

Chain 0 is "not visual" in Flickr30k Entities: it never has a box.

Boxes: the XML is 1-based (VOC); ``read_annotation`` subtracts 1 from all four
coordinates, as the official parser (``flickr30k_entities_utils.get_annotations``)
does, and the result is used as a continuous ``[x0, y0, x1, y1)`` pixel box.
A box that is empty after that (xmin == xmax or ymin == ymax: real files have
them) is skipped and counted in ``Annotation.skipped``; the rest of the file
is read. ``write_annotation`` takes 0-based boxes and writes them + 1, so the
generator's files read back as the boxes it drew.
"""
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

_TAG = re.compile(r"\[/EN#(\d+)((?:/[^\s/\]]+)+) ")


@dataclass
class Phrase:
    chain: int
    types: list
    text: str
    start: int   # character span in the plain caption, end exclusive
    end: int


@dataclass
class Caption:
    text: str                       # plain caption, markup removed
    phrases: list = field(default_factory=list)


@dataclass
class Annotation:
    width: int
    height: int
    boxes: list                     # [[xmin, ymin, xmax, ymax], ...] in pixels
    box_chains: list                # chain ids of each box (a box can serve several chains)
    scene_chains: set = field(default_factory=set)
    nobox_chains: set = field(default_factory=set)
    skipped: list = field(default_factory=list)   # [(object index, 1-based box)] empty after -1

    def chain_boxes(self, chain):
        return [i for i, cs in enumerate(self.box_chains) if chain in cs]


def parse_caption(line, where="caption"):
    """One marked-up line -> Caption with the phrases' character spans."""
    out, phrases, i = [], [], 0
    n = 0  # length of the plain text so far
    while i < len(line):
        j = line.find("[", i)
        if j < 0:
            if "]" in line[i:]:
                raise ValueError(f"{where}: unmatched ']' at column {line.index(']', i)}")
            out.append(line[i:])
            break
        if "]" in line[i:j]:
            raise ValueError(f"{where}: unmatched ']' at column {line.index(']', i)}")
        out.append(line[i:j])
        n += j - i
        m = _TAG.match(line, j)
        if m is None:
            raise ValueError(f"{where}: bad phrase markup at column {j}: {line[j:j + 30]!r}; "
                             "expected '[/EN#<chain>/<type> phrase]'")
        close = line.find("]", m.end())
        if close < 0:
            raise ValueError(f"{where}: phrase at column {j} is not closed with ']'")
        text = line[m.end():close]
        if "[" in text:
            raise ValueError(f"{where}: nested '[' inside the phrase at column {j}")
        if not text.strip():
            raise ValueError(f"{where}: empty phrase at column {j}")
        phrases.append(Phrase(int(m.group(1)), m.group(2).strip("/").split("/"), text, n, n + len(text)))
        out.append(text)
        n += len(text)
        i = close + 1
    return Caption("".join(out), phrases)


def format_caption(segments):
    """[str | (chain, type, text)] -> one marked-up line (inverse of parse_caption)."""
    return "".join(s if isinstance(s, str) else f"[/EN#{s[0]}/{s[1]} {s[2]}]" for s in segments)


def read_sentences(path, text=None):
    """Captions of Sentences/<id>.txt (``text``: its contents, read elsewhere; ``path`` names it)."""
    if text is None:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: sentence file not found")
        with open(path, encoding="utf-8") as f:
            text = f.read()
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if not lines:
        raise ValueError(f"{path}: no captions (expected one marked-up caption a line)")
    return [parse_caption(ln, f"{path} line {k + 1}") for k, ln in enumerate(lines)]


def _int_field(node, tag, path):
    el = node.find(tag)
    if el is None or el.text is None:
        raise ValueError(f"{path}: field <{tag}> missing")
    try:
        return int(float(el.text))
    except ValueError:
        raise ValueError(f"{path}: field <{tag}> = {el.text!r}, expected a number") from None


def read_annotation(path, text=None):
    """Annotations/<id>.xml (``text``: its contents, read elsewhere; ``path`` names it)."""
    if text is None:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: annotation file not found")
        with open(path, "rb") as f:
            text = f.read()
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise ValueError(f"{path}: not valid XML ({e})") from None
    size = root.find("size")
    if size is None:
        raise ValueError(f"{path}: field <size> missing (expected width/height)")
    ann = Annotation(_int_field(size, "width", path), _int_field(size, "height", path), [], [])
    for k, obj in enumerate(root.findall("object")):
        names = [n.text for n in obj.findall("name")]
        try:
            chains = [int(n) for n in names]
        except (TypeError, ValueError):
            raise ValueError(f"{path}: object {k} field <name> = {names!r}, expected chain ids") from None
        if not chains:
            raise ValueError(f"{path}: object {k} has no <name> (chain id)")
        box = obj.find("bndbox")
        if box is None:
            scene = obj.find("scene")
            is_scene = scene is not None and (scene.text or "").strip() == "1"
            target = ann.scene_chains if is_scene else ann.nobox_chains
            target.update(chains)
            continue
        xyxy = [_int_field(box, t, f"{path} object {k}") for t in ("xmin", "ymin", "xmax", "ymax")]
        if not (xyxy[0] < xyxy[2] and xyxy[1] < xyxy[3]):
            ann.skipped.append((k, xyxy))  # no area: nothing to pool, no IoU; its chain may have others
            continue
        ann.boxes.append([v - 1 for v in xyxy])  # 1-based -> 0-based, as the official parser
        ann.box_chains.append(chains)
    return ann


def write_annotation(path, filename, width, height, objects, scene_chains=()):
    """objects: [(chain, [x0, y0, x1, y1]), ...], 0-based; written 1-based (+1) as the real XML."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for tag, v in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(v)
    for chain, box in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = str(chain)
        bb = ET.SubElement(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bb, tag).text = str(int(round(v)) + 1)
    for chain in scene_chains:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = str(chain)
        ET.SubElement(obj, "nobndbox").text = "1"
        ET.SubElement(obj, "scene").text = "1"
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8")


def read_split(root, split):
    path = os.path.join(root, f"{split}.txt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: split file not found (expected one image id a line)")
    with open(path) as f:
        ids = [ln.strip() for ln in f if ln.strip()]
    if not ids:
        raise ValueError(f"{path}: split is empty")
    return ids
