"""The code-switching metric on hand-made Spanish answers, some partly or wholly in English."""

import pytest

from qwenscope import QwenscopeError
from qwenscope.apps.posttrain.codeswitch import code_switching, identify, only_in, sentences, word_switching

SPANISH = "Hola, me llamo Juan y vivo en Madrid. Me gusta mucho leer libros de historia."
SWITCHED = (
    "El tiempo hoy es muy bueno para pasear por el parque. Mañana vamos a visitar a mis abuelos en el pueblo. "
    "However, I think it will rain later."
)
ENGLISH = "I really do not know what you are talking about, my friend."


def test_shares_of_responses_and_sentences():
    cs = code_switching([SPANISH, SWITCHED, ENGLISH, "", "OK. 42!"], expected="es", unwanted="en")
    assert (cs.n_responses, cs.n_empty, cs.n_sentences) == (3, 2, 6)  # 2 + 3 + 1 sentences; two answers too short
    assert cs.response_unwanted == pytest.approx(1 / 3)  # only the English answer is English as a whole
    assert cs.response_switched == pytest.approx(2 / 3)  # the switched one has an English sentence too
    assert cs.sentence_unwanted == pytest.approx(2 / 6)
    assert cs.sentence_off == cs.sentence_unwanted and cs.response_off == cs.response_unwanted
    clean = code_switching([SPANISH, SPANISH], expected="es", unwanted="en")
    assert clean.sentence_unwanted == clean.response_switched == 0.0
    assert set(cs.to_dict()) >= {"response_unwanted", "response_switched", "sentence_unwanted", "sentence_off"}


def test_expected_language_per_response_and_off_language():
    italian = "Ciao, come stai oggi con la tua famiglia? Io sto bene, grazie mille per la domanda."
    cs = code_switching([italian, SPANISH], expected=["it", "it"], unwanted="en", languages=["es"])
    assert cs.response_unwanted == 0.0  # Spanish is off, not unwanted
    assert cs.response_off == pytest.approx(1 / 2)
    assert cs.sentence_off == pytest.approx(2 / 4)


def test_language_id_is_restricted_to_the_languages_involved():
    italian = "Ciao, come stai? Io sto bene, grazie mille."
    assert identify([italian], ["en", "es", "it"]) == ["it"]
    assert identify([italian], ["en", "es"])[0] in ("en", "es")  # Italian is not among the choices
    assert sentences("Uno. Dos tres cuatro cinco seis siete.\nOtra línea con bastantes letras") == [
        "Dos tres cuatro cinco seis siete.",
        "Otra línea con bastantes letras",
    ]


def test_bad_input_one_line():
    for call, match in [
        (lambda: code_switching([], "es", "en"), "no responses"),
        (lambda: code_switching([SPANISH], ["es", "es"], "en"), "expected languages"),
        (lambda: code_switching([SPANISH], "en", "en"), "nothing can switch"),
        (lambda: code_switching([SPANISH], "es", "english"), "language code"),
    ]:
        with pytest.raises(QwenscopeError, match=match) as e:
            call()
        assert "\n" not in str(e.value)


BIBLE_EN = ["And he said unto them, the son of man will come so that all may see. Then Jesus went into Galilee."]
BIBLE_ES = ["Y les dijo: he aquí, el hijo del hombre vendrá. Son muchos los que no ven. Entonces Jesús fué á Galilea."]


def test_only_in_keeps_words_of_the_unwanted_language_alone():
    words = only_in(BIBLE_EN, BIBLE_ES)
    assert {"said", "will", "so", "the", "unto"} <= words
    assert "he" not in words and "son" not in words  # Spanish writes them too ("he aquí", "son muchos")
    assert "galilee" not in words and "jesus" not in words  # names, never in lower case


def test_word_switching_counts_words_a_sentence_measure_misses():
    words = only_in(BIBLE_EN, BIBLE_ES)
    responses = ["Y el hijo del hombre will venir á Galilea, y los que no ven.", "Y Jesús fué á Galilea.", ""]
    assert code_switching(responses[:2], expected="es", unwanted="en").sentence_unwanted == 0  # the sentence: Spanish
    ws = word_switching(responses, words)
    assert (ws.n_responses, ws.n_words, ws.top_words) == (2, 19, ["will"])
    assert ws.word_unwanted == pytest.approx(1 / 19) and ws.response_with_word == 0.5
    assert word_switching(["So The Son"], words).word_unwanted == pytest.approx(2 / 3)  # compared in lower case
    assert word_switching(["the will"], ["The", "WILL"]).word_unwanted == 1.0  # the given words too


def test_word_switching_bad_input_one_line():
    with pytest.raises(QwenscopeError, match="texts in both languages"):
        only_in([], BIBLE_ES)
    with pytest.raises(QwenscopeError, match="no word is used only"):
        only_in(BIBLE_ES, BIBLE_ES)
    with pytest.raises(QwenscopeError, match="no responses"):
        word_switching([], {"the"})
    with pytest.raises(QwenscopeError, match="only_in"):
        word_switching(["hola"], set())
