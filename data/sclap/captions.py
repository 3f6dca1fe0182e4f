"""The `diverse` training grammar of sCLAP captions (issue 13; `data.captions: diverse`).

The `template` grammar (generate.py: 3 spatial templates, 3 plain ones, one
single-event template, the phrases in sounds.py) taught the models its few
frames, not what the words mean. This one writes captions in the register of
Clotho / stClotho: many sentence frames, connectors whose surface order may
differ from the time order ("before B, A", "B after A", "B follows A"),
passives, several nouns and verbs for every sound and several wordings for
every direction, including the diagonals.

A caption is a FRAME whose slots are the two events in TIME order:
    {A} / {B}  the first / second event as a finite clause   ("a dog barks on the left")
    {a} / {b}  the first / second event as a noun phrase      ("the chime of a bell behind")
A frame's surface order is where the slots sit in it; its time order is the
slot letter, so a reversed-surface frame ("before {B}, {A}") still has A first.
neg_t fills A with the event that plays first in neg_t (the pos's B), so its
caption swaps the time order in every frame; neg_s keeps the frame and the
words and changes only the direction phrases. The plain captions (L_sem) are
the same frame and words without any direction.

Event captions (event slots, model.event_slots / loss.event_weight): every
triplet clip also gets, per caption index k, one single-event spatial caption
of each of its two events in that clip's TIME order (event_captions), from
the same SINGLE_FRAMES and wordings; neg_t's first event caption is pos's
second, word for word. They come from a stream of their own, so adding them
changed no other caption.

Everything is drawn from the caller's RNG (generate.py gives this grammar its
own stream, so the audio is the same under both grammars). The inventories
(FRAMES, SINGLE_FRAMES, SOUNDS, DIRECTIONS) are module constants so tests can
enumerate every caption this grammar can produce.
"""
import re

CAPTIONS_PER_ITEM = 5   # Clotho's count; training draws one per item and epoch
# the generated manifest's form under this grammar, in the data cache's marker
# (families/sclap gen_params): 2 = with the event{1,2}_caption[_k] columns
VERSION = 2
# variant -> (its events in time order, its direction set): neg_t swaps the
# order, neg_s keeps it with the other sectors
VARIANT_EVENTS = {"pos": ((0, 1), "pos"), "neg_t": ((1, 0), "pos"), "neg_s": ((0, 1), "neg_s")}

# sound class -> nouns (singular subjects), verbs (3rd person singular, agree
# with every noun), clauses (whole finite clauses: plurals, passives) and
# nominals (grammatically singular noun phrases: "X follows Y", "X is heard")
SOUNDS = {
    "dog": dict(nouns=["a dog", "a small dog", "a big dog", "a puppy", "the dog"],
                verbs=["barks", "is barking", "yaps", "barks loudly", "barks a few times"],
                clauses=["a dog can be heard barking", "several barks are let out by a dog"],
                nominals=["a barking dog", "the barking of a dog", "a dog's bark"]),
    "bell": dict(nouns=["a bell", "a church bell", "a small bell", "the bell"],
                 verbs=["rings", "is ringing", "chimes", "tolls", "dings"],
                 clauses=["a bell is rung", "church bells ring", "somebody rings a bell"],
                 nominals=["a ringing bell", "the chime of a bell", "the sound of a bell"]),
    "siren": dict(nouns=["a siren", "an ambulance siren", "a police siren", "an alarm"],
                  verbs=["wails", "is wailing", "blares", "sounds", "goes off"],
                  clauses=["a siren passes by", "a police car's siren is switched on"],
                  nominals=["a wailing siren", "the sound of a siren", "a blaring alarm"]),
    "engine": dict(nouns=["an engine", "a motor", "a car engine", "a truck"],
                   verbs=["rumbles", "is running", "hums", "idles", "roars"],
                   clauses=["an engine is started", "a car is idling"],
                   nominals=["a running engine", "the hum of a motor", "the rumble of an engine"]),
    "rain": dict(nouns=["rain", "light rain", "heavy rain"],
                 verbs=["falls", "is falling", "patters", "pours down", "drips"],
                 clauses=["it is raining", "it rains", "raindrops hit the ground"],
                 nominals=["falling rain", "the patter of rain", "the sound of rain"]),
    "footsteps": dict(nouns=["someone", "a person", "a man", "a woman"],
                      verbs=["walks", "is walking", "takes a few steps", "walks by"],
                      clauses=["footsteps approach", "footsteps can be heard", "steps are taken"],
                      nominals=["the sound of footsteps", "the patter of footsteps", "someone walking"]),
    "bird": dict(nouns=["a bird", "a small bird", "a songbird"],
                 verbs=["chirps", "is singing", "tweets", "sings", "is chirping"],
                 clauses=["birds are chirping", "birds sing"],
                 nominals=["a chirping bird", "birdsong", "the chirping of a bird"]),
    "clap": dict(nouns=["someone", "a person", "a man", "a woman"],
                 verbs=["claps", "is clapping", "claps a few times", "claps their hands"],
                 clauses=["hands clap", "people are clapping", "a few claps are heard"],
                 nominals=["clapping", "a round of clapping", "the sound of hands clapping"]),
    "knock": dict(nouns=["someone", "a person", "a man", "a woman"],
                  verbs=["knocks", "is knocking", "knocks on a door", "knocks on wood"],
                  clauses=["a door is knocked on", "there is knocking on a door"],
                  nominals=["knocking", "a knock at the door", "the sound of knocking"]),
    "whistle": dict(nouns=["someone", "a person", "a man", "a referee"],
                    verbs=["whistles", "is whistling", "blows a whistle", "whistles a tune"],
                    clauses=["a whistle is blown", "a shrill whistle sounds"],
                    nominals=["a whistle", "whistling", "a shrill whistle"]),
    "phone": dict(nouns=["a phone", "a telephone", "a cell phone", "a mobile phone"],
                  verbs=["rings", "is ringing", "buzzes", "starts ringing"],
                  clauses=["a phone is ringing somewhere", "someone's phone goes off"],
                  nominals=["a ringing phone", "the ring of a telephone", "a phone call"]),
    "drum": dict(nouns=["a drum", "a bass drum", "a snare drum"],
                 verbs=["booms", "is beaten", "thumps", "is played", "is hit hard"],
                 clauses=["someone hits a drum", "drums are played", "someone plays a drum"],
                 nominals=["drumming", "a drumbeat", "the beat of a drum"]),
}

# sector index (data/sclap/spatial.py: 0 front, counter-clockwise) -> phrases
# that follow a clause or a noun phrase; every sector has the same count, so a
# style index drawn per event carries over to neg_s's other sectors
DIRECTIONS = [
    ["in front", "from the front", "straight ahead", "ahead", "right in front", "at the front"],
    ["to the front left", "from the front left", "ahead and to the left", "in front on the left",
     "ahead on the left", "at the front left"],
    ["on the left", "from the left", "to the left", "off to the left", "on the left side",
     "from the left side"],
    ["behind on the left", "from the back left", "behind and to the left", "to the back left",
     "at the back on the left", "from the rear left"],
    ["behind", "from behind", "at the back", "from the back", "from the rear", "somewhere behind"],
    ["behind on the right", "from the back right", "behind and to the right", "to the back right",
     "at the back on the right", "from the rear right"],
    ["on the right", "from the right", "to the right", "off to the right", "on the right side",
     "from the right side"],
    ["to the front right", "from the front right", "ahead and to the right", "in front on the right",
     "ahead on the right", "at the front right"],
]

# two-event frames; the letter is the time order (A first), not the surface order
FRAMES = [
    "{A}, and then {B}",
    "{A}, and a moment later {B}",
    "first {A}, and after that {B}",
    "{A}; shortly afterwards {B}",
    "{A} before {B}",
    "before {B}, {A}",
    "{B} after {A}",
    "after {A}, {B}",
    "{b} follows {a}",
    "{a} is followed by {b}",
    "{a}, followed by {b}",
    "{a} and then {b}",
    "at first {A}, and later {B}",
    "{A}, and when that stops, {B}",
    "{B}, but only after {A}",
    "{b} comes after {a}",
    "{a} is heard first, then {b}",
    "the recording starts with {a} and ends with {b}",
    "{A}, and soon {B}",
    "there is {a}, and afterwards {b}",
    "{b} is preceded by {a}",
    "{A} first, and {B} next",
]
SINGLE_FRAMES = ["{A}", "{a} can be heard", "you can hear {a}", "there is {a}", "{A} for a moment",
                 "in the room, {A}", "{a} is heard", "a recording of {a}"]
SLOT = re.compile(r"\{([ABab])\}")


def time_order(frame):
    """The slots of a frame in surface order, e.g. 'before {B}, {A}' -> ['B', 'A']."""
    return SLOT.findall(frame)


def is_reversed(frame):
    """True when the later event is named first."""
    return [s.upper() for s in time_order(frame)] == ["B", "A"]


def clauses(name):
    """Every finite clause naming sound class `name` (no direction)."""
    s = SOUNDS[name]
    return [f"{n} {v}" for n in s["nouns"] for v in s["verbs"]] + s["clauses"]


def _cap(s):
    return s[0].upper() + s[1:] + "."


def draw_event(rng, name):
    """The wording of one event, fixed across the three variants: (clause, nominal, style)."""
    return (str(clauses(name)[rng.integers(len(clauses(name)))]),
            str(SOUNDS[name]["nominals"][rng.integers(len(SOUNDS[name]["nominals"]))]),
            int(rng.integers(len(DIRECTIONS[0]))))


def render(frame, first, second, sectors=None):
    """Fill a frame with two events (first, second in TIME order), each a
    draw_event tuple; sectors (s_first, s_second), or None: no directions."""
    def phrase(ev, sec, nominal):
        text = ev[1] if nominal else ev[0]
        return text if sec is None else f"{text} {DIRECTIONS[sec][ev[2]]}"
    s1, s2 = sectors if sectors is not None else (None, None)
    fill = {"A": phrase(first, s1, False), "B": phrase(second, s2, False),
            "a": phrase(first, s1, True), "b": phrase(second, s2, True)}
    return _cap(SLOT.sub(lambda m: fill[m.group(1)], frame))


def triplet_captions(rng, names, sectors, n=CAPTIONS_PER_ITEM):
    """Captions of one item. names: the two classes (pos order); sectors:
    {"pos": (sa, sb), "neg_s": (sa2, sb2)} (event 0's, event 1's).
    -> {variant: (captions [n], plain captions [n])}; caption k of the three
    variants shares its frame and words."""
    out = {v: ([], []) for v in VARIANT_EVENTS}
    for _ in range(n):
        frame = FRAMES[rng.integers(len(FRAMES))]
        events = [draw_event(rng, nm) for nm in names]
        for v, ((e1, e2), dset) in VARIANT_EVENTS.items():
            out[v][0].append(render(frame, events[e1], events[e2], (sectors[dset][e1], sectors[dset][e2])))
            out[v][1].append(render(frame, events[e1], events[e2]))
    return out


def single_caption(rng, name, sector):
    """(caption, plain caption) of a one-event clip."""
    frame = SINGLE_FRAMES[rng.integers(len(SINGLE_FRAMES))]
    ev = draw_event(rng, name)
    return render(frame, ev, ev, (sector, sector)), render(frame, ev, ev)


def event_captions(rng, names, sectors, n=CAPTIONS_PER_ITEM):
    """Single-event spatial captions of one item's two events (the event
    slots' targets). names, sectors: as triplet_captions. -> {variant:
    (first event's captions [n], second event's [n])}, first / second in that
    variant's TIME order. Caption k of an event has one frame and wording in
    all three variants; only its direction phrase follows the variant."""
    words = [[(SINGLE_FRAMES[rng.integers(len(SINGLE_FRAMES))], draw_event(rng, nm)) for nm in names]
             for _ in range(n)]
    out = {}
    for v, (order, dset) in VARIANT_EVENTS.items():
        out[v] = tuple([render(frame, ev, ev, (sectors[dset][e], sectors[dset][e]))
                        for frame, ev in (w[e] for w in words)] for e in order)
    return out
