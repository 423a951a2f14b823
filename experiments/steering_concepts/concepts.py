"""The concepts of ``experiments/steering_concepts/steer_concepts.py``: search texts, an automatic scorer and held-out
evaluation prompts.

Each concept has 16 positive texts (about it) and 16 negative texts (about anything else), written for this bench
and used only by the searches; a scorer that says whether a generation shows the concept; and the kind of prompt it
is evaluated on: ``instructions`` (chat requests about none of the concepts, rendered with the chat template when the
model has one) or ``openings`` (English sentence openings for plain continuation). The evaluation prompts share no
text with the search texts, nor with the probe's neutral prefixes (``qwenscope.steer.probe.PREFIXES``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qwenscope.experiment import load_script


@dataclass(frozen=True)
class Concept:
    name: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]
    score: Callable[[str], bool]
    """True when a generation shows the concept."""
    prompts: str
    """instructions | openings: which evaluation prompts (see the module doc)."""
    target: str
    """What ``score`` checks, in words."""


def words(forms: str) -> Callable[[str], bool]:
    """A scorer: True when the text holds a whole word matching one of the space-separated regexes ``forms``
    (case-insensitive; ``\\s`` inside a form matches a space)."""
    pattern = re.compile(r"\b(?:" + "|".join(forms.split()) + r")\b", re.IGNORECASE)

    def score(text: str) -> bool:
        return pattern.search(text) is not None

    return score


def is_french(text: str) -> bool:
    """langid's verdict on the text (all of langid's languages allowed) is French."""
    import langid

    return bool(text.strip()) and langid.classify(text)[0] == "fr"


SEA = Concept(
    "sea",
    positive=(
        "Fishing boats rocked gently in the harbour at sunrise.",
        "The captain steered the ship through rough seas toward the island.",
        "Waves broke over the sandbar and foamed around our ankles.",
        "A pod of dolphins followed the ferry across the bay.",
        "At low tide the children collected shells and crabs on the shore.",
        "The old sailor told stories of storms on the open ocean.",
        "Salt spray hit the deck as the yacht leaned into the wind.",
        "Seaweed and driftwood covered the beach after the storm.",
        "The lighthouse keeper watched the tankers pass along the coast.",
        "Divers explored a shipwreck on the bottom of the sea.",
        "Gulls circled above the fishermen hauling in their nets.",
        "The surf was perfect, so we paddled out beyond the breakers.",
        "A humpback whale breached a hundred metres from our boat.",
        "The coral reef was full of bright fish and sea turtles.",
        "We sailed from one Greek island to the next for a week.",
        "The tide rolled in and erased our footprints in the sand.",
    ),
    negative=(
        "The accountant checked the figures twice before the audit.",
        "My sister bought a second-hand laptop for her studies.",
        "The committee postponed the vote until next week.",
        "He spent the afternoon repairing the fence in the backyard.",
        "The new library has a quiet room for reading newspapers.",
        "Our manager asked everyone to update the spreadsheet.",
        "The professor explained the theory with a simple diagram.",
        "She learned to knit during the long evenings of last year.",
        "The bus driver waited for the last passenger to sit down.",
        "The printer jammed again just before the deadline.",
        "They painted the living room a pale shade of grey.",
        "The judge listened carefully to both witnesses.",
        "A new pharmacy opened next to the post office.",
        "He keeps his receipts in a shoebox under the desk.",
        "The students wrote their names at the top of the exam.",
        "The mechanic replaced the brakes on my car.",
    ),
    score=words(
        r"seas? ocean\w* waves? beach\w* shores? ships? boats? sail\w* tides? coast\w* marine harbou?rs? "
        r"islands? whales? dolphins? coral surf(s|ing|ers?)? underwater seaside fish\w* anchor\w* "
        r"lighthouses?"
    ),
    prompts="instructions",
    target="a sea word (sea, ocean, wave, beach, ship, boat, sail, ...)",
)

MUSIC = Concept(
    "music",
    positive=(
        "The band played their new song to a packed concert hall.",
        "She practised the piano every evening until the melody felt easy.",
        "The guitarist tuned his strings before the show began.",
        "The orchestra rehearsed the symphony for three hours.",
        "He hummed the chorus of the song all the way home.",
        "The drummer kept a steady rhythm while the crowd sang along.",
        "Our choir performed Christmas carols in the town square.",
        "The jazz trio improvised a slow tune on the saxophone.",
        "She wrote the lyrics first and composed the music later.",
        "The violinist bowed after the final note of the sonata.",
        "We listened to the new album on vinyl.",
        "The singer hit the high note and the audience cheered.",
        "He learned to read sheet music at the age of seven.",
        "The festival stage featured rock, folk and hip-hop bands.",
        "The conductor raised his baton and the musicians began.",
        "Her favourite song has a catchy chorus and a sad verse.",
    ),
    negative=(
        "The plumber fixed the leaking pipe under the sink.",
        "He filled in the tax form and mailed it on Friday.",
        "The hikers followed the trail up to the ridge.",
        "Our landlord raised the rent by five percent.",
        "The nurse measured the patient's blood pressure.",
        "She planted tomatoes and beans in the vegetable patch.",
        "The engineers tested the bridge with heavy trucks.",
        "I forgot my password and had to reset it.",
        "The council approved the new parking rules.",
        "He sanded the table and gave it a coat of varnish.",
        "The train to the airport leaves every twenty minutes.",
        "The chemist weighed the powder on a precise scale.",
        "The company moved its office to a larger building.",
        "She sorted the old letters into three boxes.",
        "The referee showed the player a yellow card.",
        "Our neighbour is building a shed in his garden.",
    ),
    score=words(
        r"music\w* songs? sing(s|ing|ers?)? sang melod\w* guitar\w* pianos? pianists? rhythm\w* bands? "
        r"concerts? orchestra\w* violin\w* drums? drummers? lyric\w* tunes? choirs? jazz symphon\w* chorus "
        r"composers?"
    ),
    prompts="instructions",
    target="a music word (music, song, melody, guitar, piano, band, ...)",
)

SPACE = Concept(
    "space",
    positive=(
        "The astronauts floated inside the space station above the Earth.",
        "The telescope revealed a distant galaxy full of young stars.",
        "The rocket lifted off and climbed into orbit.",
        "Mars has two small moons and a thin atmosphere.",
        "The probe sent back photographs of Saturn's rings.",
        "A comet with a long bright tail crossed the night sky.",
        "Astronomers discovered a planet orbiting a nearby star.",
        "The crew prepared for a six-month mission to the Moon.",
        "Black holes bend the light of the stars behind them.",
        "The solar system formed from a cloud of gas and dust.",
        "The satellite circles the planet every ninety minutes.",
        "Through the telescope we could see the craters of the Moon.",
        "The universe is expanding, and distant galaxies move away from us.",
        "The spacecraft landed on an asteroid and collected samples.",
        "Jupiter is the largest planet in our solar system.",
        "The Milky Way stretched across the dark desert sky.",
    ),
    negative=(
        "The baker opened his shop at six in the morning.",
        "She ironed her shirt before the interview.",
        "The tenants complained about the noisy heating.",
        "He wrote a long report about the sales figures.",
        "The school bus stopped at the corner of the street.",
        "My cousin is studying law at the university.",
        "The farmer repaired the tractor in the barn.",
        "The shop offered a discount on winter boots.",
        "The lawyer read the contract line by line.",
        "She borrowed a ladder to clean the gutters.",
        "The café was crowded during the lunch break.",
        "He changed the light bulb in the hallway.",
        "The town hall organises a market every Saturday.",
        "The secretary booked a meeting room for ten people.",
        "They repainted the old fence white.",
        "The tailor shortened the sleeves of my jacket.",
    ),
    score=words(
        r"space stars? planet\w* galax\w* orbit\w* rockets? astronauts? universe telescopes? moons? cosmos "
        r"cosmic satellites? nasa mars jupiter saturn comets? asteroids? solar\ssystem spacecraft "
        r"astronom\w*"
    ),
    prompts="instructions",
    target="a space word (space, star, planet, galaxy, orbit, rocket, moon, ...)",
)

FOOD = Concept(
    "food",
    positive=(
        "She baked a loaf of bread with rosemary and olive oil.",
        "The soup simmered for hours with onions, carrots and garlic.",
        "He grilled the chicken and served it with a fresh salad.",
        "The recipe calls for butter, sugar and three eggs.",
        "We ate pasta with tomato sauce and grated cheese.",
        "The chef tasted the sauce and added a pinch of salt.",
        "Warm apple pie with vanilla ice cream is my favourite dessert.",
        "They cooked rice and spicy beans for dinner.",
        "The bakery sells croissants, muffins and chocolate cake.",
        "Chop the vegetables and fry them in a hot pan.",
        "The restaurant is famous for its delicious noodles.",
        "For breakfast I had pancakes with honey and berries.",
        "He roasted potatoes in the oven until they were crispy.",
        "The cheese and ham sandwich tasted wonderful.",
        "She stirred the curry and added coconut milk.",
        "Dinner was a bowl of stew, bread and a slice of cake.",
    ),
    negative=(
        "The electrician installed new sockets in the office.",
        "He studied the map before the long drive.",
        "The museum guard locked the doors at six.",
        "She answered thirty emails before noon.",
        "The children built a tower out of wooden blocks.",
        "The bank changed its opening hours.",
        "Our team finished the project ahead of schedule.",
        "The mayor gave a speech about public transport.",
        "He polished his shoes for the wedding.",
        "The printer needs a new cartridge.",
        "She renewed her passport at the embassy.",
        "The carpenter measured the window frame.",
        "The students organised a debate about elections.",
        "The taxi got stuck in traffic near the station.",
        "He repaired the zip on his old jacket.",
        "The architect presented the plans for the new school.",
    ),
    score=words(
        r"foods? cook\w* bread bak(e|es|ed|er|ers|ery|ing) recipes? delicious eat(s|en|ing)? meals? "
        r"tast(e|es|ed|y|ing) soups? cheese dinner lunch breakfast kitchens? sauces? cakes? dish(es)? "
        r"flavou?rs? chefs? fruits? vegetables? meat chicken pasta rice"
    ),
    prompts="instructions",
    target="a food word (food, cook, bread, recipe, meal, taste, ...)",
)

DOGS = Concept(
    "dogs",
    positive=(
        "The puppy chased its tail around the kitchen.",
        "Our dog barks every time the postman comes.",
        "She took the golden retriever for a walk in the park.",
        "The sheepdog herded the flock down the hill.",
        "He threw the ball and the terrier brought it back.",
        "The dog wagged its tail and licked my hand.",
        "The vet said the old beagle was healthy.",
        "Every morning the dogs wait by the door for their walk.",
        "The puppy learned to sit and give a paw.",
        "A police dog sniffed the suitcases at the airport.",
        "The labrador slept in its basket by the fire.",
        "She bought a new leash and a collar for her dog.",
        "The husky pulled the sled across the snow.",
        "The dog buried a bone under the apple tree.",
        "Our neighbour's poodle growls at strangers.",
        "The shelter found homes for twenty puppies this month.",
    ),
    negative=(
        "The pharmacist explained how to take the medicine.",
        "He balanced the budget for the next quarter.",
        "The students handed in their essays on time.",
        "She hung the new curtains in the bedroom.",
        "The council repaired the potholes on the main road.",
        "My phone battery lasts two days.",
        "The cashier counted the coins twice.",
        "He is learning Spanish with an online course.",
        "The factory produces parts for washing machines.",
        "The candidates debated on television last night.",
        "She framed the certificate and hung it on the wall.",
        "The heating broke down during the cold week.",
        "The reporter interviewed the new minister.",
        "He sorted the screws into small jars.",
        "The office printer prints in colour now.",
        "The tourists bought tickets for the cathedral tour.",
    ),
    score=words(
        r"dogs? pupp(y|ies) bark(s|ed|ing)? leash\w* fetch\w* paws? terriers? retrievers? labradors? "
        r"poodles? beagles? husk(y|ies) kennels? canine wag(s|ged|ging)? collies? sheepdogs?"
    ),
    prompts="instructions",
    target="a dog word (dog, puppy, bark, leash, paw, ...)",
)

FRENCH = Concept(
    "french",
    positive=(
        "Le matin, je prends un café avant de partir au travail.",
        "Nous avons visité un petit village au bord de la rivière.",
        "Elle a lu ce roman pendant les vacances d'été.",
        "Les enfants jouent dans la cour de l'école.",
        "Il faut acheter du pain et du lait pour demain.",
        "Mon frère habite dans un appartement près de la gare.",
        "La réunion commence à dix heures dans la grande salle.",
        "Je voudrais réserver une table pour quatre personnes.",
        "Le train pour Lyon a eu une heure de retard.",
        "Nous parlons souvent de politique pendant le dîner.",
        "Elle travaille comme infirmière dans un hôpital de la ville.",
        "Il pleuvait tellement que nous sommes restés à la maison.",
        "Les musées sont gratuits le premier dimanche du mois.",
        "J'ai oublié mes clés chez mes parents hier soir.",
        "Le professeur a expliqué la leçon une deuxième fois.",
        "Cette boulangerie vend les meilleurs croissants du quartier.",
    ),
    negative=(
        "In the morning, I have a coffee before I leave for work.",
        "We visited a small village on the bank of the river.",
        "She read this novel during the summer holidays.",
        "The children are playing in the schoolyard.",
        "We need to buy bread and milk for tomorrow.",
        "My brother lives in a flat near the station.",
        "The meeting starts at ten in the large room.",
        "I would like to book a table for four people.",
        "The train to Lyon was an hour late.",
        "We often talk about politics over dinner.",
        "She works as a nurse in a hospital in town.",
        "It rained so much that we stayed at home.",
        "The museums are free on the first Sunday of the month.",
        "I left my keys at my parents' house last night.",
        "The teacher explained the lesson a second time.",
        "This bakery sells the best croissants in the neighbourhood.",
    ),
    score=is_french,
    prompts="openings",
    target="French (langid 'fr')",
)

CONCEPTS = {c.name: c for c in (SEA, MUSIC, SPACE, FOOD, DOGS, FRENCH)}

# Chat requests about none of the concepts (evaluation only).
INSTRUCTIONS = (
    "Describe your favourite chair.",
    "Write a sentence about a Monday.",
    "Tell me about a useful habit.",
    "Give me a tip for staying organised.",
    "Describe an office building.",
    "Write a short story about a lost umbrella.",
    "What makes a good neighbour?",
    "Describe a quiet street.",
    "Write a sentence about a new pair of shoes.",
    "Tell me about a famous painter.",
    "Describe a walk to work.",
    "Write a few lines about patience.",
    "Give me advice for writing an essay.",
    "Describe a classroom.",
    "Write a sentence about an old photograph.",
    "Tell me about your favourite season.",
    "Write a short story about a mysterious letter.",
    "Describe a hospital waiting room.",
    "What is the best way to learn to draw?",
    "Write about a visit to a museum.",
    "Describe a game of chess.",
    "Tell me about a person you admire.",
    "Write a sentence about a long meeting.",
    "Describe a shop window.",
    "Give me a tip for saving time.",
    "Write a short story about a secret door.",
    "Describe a bridge in a city.",
    "Tell me about a hobby that is easy to start.",
    "Write a sentence about kindness.",
    "Describe a bookshelf.",
    "What should I bring to a job interview?",
    "Write about a quiet Sunday.",
    "Describe a painting of a house.",
    "Tell me about learning to drive.",
    "Write a short story about an inventor.",
    "Describe a train station.",
    "Give me an idea for a birthday present.",
    "Write a sentence about the first day at a new job.",
    "Describe a workshop full of tools.",
    "Tell me about a teacher who changed your life.",
    "Write a short story about a missing wallet.",
    "Describe a staircase.",
    "What makes a good leader?",
    "Write a sentence about a city square.",
    "Describe a winter coat.",
    "Tell me about the history of writing.",
    "Write a short story about a tailor.",
    "Describe your perfect desk.",
    "Give me a tip for remembering names.",
    "Write a sentence about a long journey by car.",
)

# English sentence openings for plain continuation (evaluation only), shared with the other experiments.
OPENINGS = load_script(Path(__file__).parents[1] / "prompts.py").OPENINGS

PROMPTS = {"instructions": INSTRUCTIONS, "openings": OPENINGS}
