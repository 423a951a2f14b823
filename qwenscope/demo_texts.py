"""The texts of ``qwenscope demo``: prompts to read, a contrastive pair of text sets, and a prompt to steer."""

PROMPTS = (
    "The fishermen pulled their boat onto the beach as the waves grew stronger.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "Le chat est assis sur le tapis et regarde la pluie tomber.",
)

CONCEPT = "the sea"

POSITIVE = (
    "The ocean waves crashed against the rocky shore.",
    "Sailors crossed the sea in a small wooden boat.",
    "Dolphins and whales swim in the deep blue ocean.",
    "The tide came in and covered the sandy beach.",
    "Coral reefs grow in warm tropical seas.",
    "The fisherman cast his net into the sea at dawn.",
    "Salt water sprayed over the deck of the ship.",
    "A lighthouse guided ships along the coast.",
    "Sharks hunt near the surface of the ocean.",
    "We walked along the beach as the waves rolled in.",
    "Seagulls flew above the harbor and the boats.",
    "Underwater, the divers saw schools of colorful fish.",
    "The storm at sea made the waves enormous.",
    "The island was surrounded by turquoise water.",
    "The surfers waited for a big wave.",
    "The sea breeze smelled of salt.",
)

NEGATIVE = (
    "The meeting was scheduled for Monday morning.",
    "He studied mathematics at the university.",
    "The software update fixed several bugs.",
    "The train arrived late at the station.",
    "She read a novel about a detective.",
    "The company hired new engineers last year.",
    "The election results were announced tonight.",
    "He fixed the broken chair in the garage.",
    "The museum opened a new exhibition on painting.",
    "The lawyer explained the contract to the client.",
    "Children played football in the park.",
    "The teacher graded the exams.",
    "The car would not start this morning.",
    "The musician played the violin on stage.",
    "He wrote an email to his manager.",
    "The doctor examined the patient's knee.",
)

STEER_PROMPT = "Write a sentence about your morning."
