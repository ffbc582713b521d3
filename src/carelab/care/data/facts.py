"""The built-in common-knowledge fact table behind the offline counterfactual (CofCA-shaped) test.

Context fidelity can only be measured on facts the model already *knows*: a counterfactual context
then pulls against its memory. Each :class:`Fact` has a question, its true answer, one sentence
stating it and an altered answer of the same type (drawn from the same group, so a capital is
replaced by another capital). Which facts SmolLM2-135M-Instruct answers right without context is
measured with ``carelab data check-facts --write-known src/carelab/data/facts_smollm2.json``; once that
file exists :func:`fact_table` returns only those facts (until then, all candidates).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from carelab.care.eval.metrics import normalize_answer


@dataclass(frozen=True)
class Fact:
    """One common-knowledge fact and its counterfactual twin."""

    id: str
    category: str
    topic: str
    question: str
    answer: str
    sentence: str
    altered: str
    aliases: tuple[str, ...] = field(default_factory=tuple)

    @property
    def altered_sentence(self) -> str:
        """The sentence stating the altered fact (the answer replaced once)."""
        return _answer_re(self.answer).sub(lambda _m: self.altered, self.sentence, count=1)

    def accepts(self, prediction: str, counterfactual: bool = False) -> bool:
        """True when the prediction contains the (altered, if ``counterfactual``) answer or an alias."""
        golds = (self.altered,) if counterfactual else (self.answer, *self.aliases)
        pred = f" {normalize_answer(prediction)} "
        return any(f" {normalize_answer(g)} " in pred for g in golds if normalize_answer(g))


# --- candidate groups: (topic, answer) pairs under one question/sentence template -----------------
_CAPITALS = """France|Paris;Germany|Berlin;Italy|Rome;Spain|Madrid;Japan|Tokyo;China|Beijing;Russia|Moscow;
England|London;Egypt|Cairo;Greece|Athens;Portugal|Lisbon;Ireland|Dublin;Austria|Vienna;Poland|Warsaw;Norway|Oslo;
Sweden|Stockholm;Finland|Helsinki;Denmark|Copenhagen;Netherlands|Amsterdam;Belgium|Brussels;Hungary|Budapest;
the Czech Republic|Prague;Thailand|Bangkok;South Korea|Seoul;India|New Delhi;Kenya|Nairobi;Argentina|Buenos Aires;
Peru|Lima;Chile|Santiago;Mexico|Mexico City;Canada|Ottawa;Australia|Canberra;Cuba|Havana;Turkey|Ankara;Iran|Tehran;
Iraq|Baghdad;Indonesia|Jakarta;the Philippines|Manila;Vietnam|Hanoi;Colombia|Bogota;Venezuela|Caracas;
Ukraine|Kyiv;Scotland|Edinburgh;Wales|Cardiff;Switzerland|Bern;Saudi Arabia|Riyadh;Afghanistan|Kabul;
Pakistan|Islamabad;Nigeria|Abuja;Ethiopia|Addis Ababa;Morocco|Rabat;Brazil|Brasilia;the United States|Washington;
Iceland|Reykjavik;Romania|Bucharest;Bulgaria|Sofia;Serbia|Belgrade;Croatia|Zagreb;Malaysia|Kuala Lumpur;
Nepal|Kathmandu;Bangladesh|Dhaka;Syria|Damascus;Lebanon|Beirut;Jordan|Amman;Qatar|Doha;Ghana|Accra;
Uganda|Kampala;Zimbabwe|Harare;Senegal|Dakar;New Zealand|Wellington;Jamaica|Kingston;Estonia|Tallinn;
Latvia|Riga;Lithuania|Vilnius;Slovakia|Bratislava;Mongolia|Ulaanbaatar;North Korea|Pyongyang;Taiwan|Taipei;
Uruguay|Montevideo;Bolivia|La Paz;Ecuador|Quito;Libya|Tripoli;Tunisia|Tunis;Algeria|Algiers;Sudan|Khartoum;
Zambia|Lusaka"""

_LANDMARKS = """Eiffel Tower|Paris;Colosseum|Rome;Big Ben clock tower|London;Statue of Liberty|New York;
Brandenburg Gate|Berlin;Kremlin|Moscow;Sydney Opera House|Sydney;Golden Gate Bridge|San Francisco;Acropolis|Athens;
Forbidden City|Beijing;Taj Mahal|Agra;Louvre museum|Paris;Sagrada Familia|Barcelona;Burj Khalifa|Dubai;
Space Needle|Seattle;Hollywood sign|Los Angeles;Christ the Redeemer statue|Rio de Janeiro;Buckingham Palace|London;
CN Tower|Toronto;Empire State Building|New York;White House|Washington;Hagia Sophia|Istanbul;
Petronas Towers|Kuala Lumpur;Gateway Arch|St. Louis;Leaning Tower|Pisa;Tower Bridge|London;Vatican|Rome"""

_LANGUAGES = """France|French;Germany|German;Spain|Spanish;Italy|Italian;Brazil|Portuguese;Japan|Japanese;
China|Chinese;Russia|Russian;Mexico|Spanish;Greece|Greek;the Netherlands|Dutch;Sweden|Swedish;Poland|Polish;
Turkey|Turkish;Egypt|Arabic;Portugal|Portuguese;South Korea|Korean;Argentina|Spanish;Israel|Hebrew;Finland|Finnish;
Norway|Norwegian;Denmark|Danish;Hungary|Hungarian;Iran|Persian;Thailand|Thai;Vietnam|Vietnamese;England|English"""

_CONTINENTS = """Brazil|South America;Kenya|Africa;Japan|Asia;France|Europe;Canada|North America;Egypt|Africa;
India|Asia;Argentina|South America;Germany|Europe;Mexico|North America;Nigeria|Africa;China|Asia;Italy|Europe;
Peru|South America;Chile|South America;Spain|Europe;Thailand|Asia;Morocco|Africa;Colombia|South America;
the United States|North America;Vietnam|Asia;Ghana|Africa;Poland|Europe;South Korea|Asia"""

_CURRENCIES = """Japan|yen;the United Kingdom|pound;the United States|dollar;India|rupee;Russia|ruble;China|yuan;
Mexico|peso;Switzerland|franc;Germany|euro;South Korea|won;France|euro;Italy|euro;Brazil|real;Canada|dollar"""

_AUTHORS = """Romeo and Juliet|William Shakespeare;Hamlet|William Shakespeare;Macbeth|William Shakespeare;
Pride and Prejudice|Jane Austen;Nineteen Eighty-Four|George Orwell;Animal Farm|George Orwell;
Harry Potter|J.K. Rowling;The Hobbit|J.R.R. Tolkien;The Lord of the Rings|J.R.R. Tolkien;
Don Quixote|Miguel de Cervantes;War and Peace|Leo Tolstoy;Oliver Twist|Charles Dickens;
A Christmas Carol|Charles Dickens;The Adventures of Tom Sawyer|Mark Twain;The Odyssey|Homer;The Iliad|Homer;
Frankenstein|Mary Shelley;Dracula|Bram Stoker;The Great Gatsby|F. Scott Fitzgerald;Moby-Dick|Herman Melville;
the Sherlock Holmes stories|Arthur Conan Doyle;Alice's Adventures in Wonderland|Lewis Carroll;
On the Origin of Species|Charles Darwin;Crime and Punishment|Fyodor Dostoevsky;The Divine Comedy|Dante Alighieri;
Les Miserables|Victor Hugo;The Cat in the Hat|Dr. Seuss;To Kill a Mockingbird|Harper Lee;
The Old Man and the Sea|Ernest Hemingway;Charlotte's Web|E.B. White;Anna Karenina|Leo Tolstoy;
Great Expectations|Charles Dickens;Jane Eyre|Charlotte Bronte;The Jungle Book|Rudyard Kipling"""

_SPORTS = """Lionel Messi|football;Roger Federer|tennis;Michael Jordan|basketball;Tiger Woods|golf;Babe Ruth|baseball;
Wayne Gretzky|ice hockey;Muhammad Ali|boxing;Cristiano Ronaldo|football;Serena Williams|tennis;
Michael Phelps|swimming;LeBron James|basketball;Rafael Nadal|tennis;Pele|football;Kobe Bryant|basketball;
Mike Tyson|boxing;Novak Djokovic|tennis;Shaquille O'Neal|basketball;David Beckham|football"""

_COUNTRY_OF = """the pyramids of Giza|Egypt;the Great Wall|China;Machu Picchu|Peru;Mount Fuji|Japan;Stonehenge|England;
the Eiffel Tower|France;the Colosseum|Italy;the Taj Mahal|India;the Statue of Liberty|the United States;
the Kremlin|Russia;the Sydney Opera House|Australia;the Acropolis|Greece;the Sagrada Familia|Spain;
Niagara Falls|Canada;the Leaning Tower of Pisa|Italy;Big Ben|England;the Brandenburg Gate|Germany;
the Forbidden City|China;Table Mountain|South Africa;Angkor Wat|Cambodia"""

_ORIGIN = """pizza|Italy;sushi|Japan;tacos|Mexico;croissants|France;kimchi|South Korea;paella|Spain;
the hamburger|the United States;curry|India;bratwurst|Germany;baklava|Turkey;borscht|Ukraine;
pasta|Italy;tea ceremonies|Japan;flamenco dancing|Spain;the tango|Argentina;samba|Brazil;kangaroos|Australia;
pandas|China;kiwi birds|New Zealand;polar bears|the Arctic"""

# Free-form facts: (category, topic, question, sentence, answer).
_FREE = [
    ("person", "telephone", "Who invented the telephone?", "The telephone was invented by Alexander Graham Bell.",
     "Alexander Graham Bell"),
    ("person", "light bulb", "Who invented the light bulb?", "The light bulb was invented by Thomas Edison.",
     "Thomas Edison"),
    ("person", "penicillin", "Who discovered penicillin?", "Penicillin was discovered by Alexander Fleming.",
     "Alexander Fleming"),
    ("person", "relativity", "Who developed the theory of relativity?",
     "The theory of relativity was developed by Albert Einstein.", "Albert Einstein"),
    ("person", "Mona Lisa", "Who painted the Mona Lisa?", "The Mona Lisa was painted by Leonardo da Vinci.",
     "Leonardo da Vinci"),
    ("person", "Starry Night", "Who painted The Starry Night?", "The Starry Night was painted by Vincent van Gogh.",
     "Vincent van Gogh"),
    ("person", "Sistine Chapel", "Who painted the ceiling of the Sistine Chapel?",
     "The ceiling of the Sistine Chapel was painted by Michelangelo.", "Michelangelo"),
    ("person", "Moon landing", "Who was the first person to walk on the Moon?",
     "The first person to walk on the Moon was Neil Armstrong.", "Neil Armstrong"),
    ("person", "first US president", "Who was the first president of the United States?",
     "The first president of the United States was George Washington.", "George Washington"),
    ("person", "laws of motion", "Who formulated the three laws of motion?",
     "The three laws of motion were formulated by Isaac Newton.", "Isaac Newton"),
    ("person", "evolution", "Who proposed the theory of evolution by natural selection?",
     "The theory of evolution by natural selection was proposed by Charles Darwin.", "Charles Darwin"),
    ("person", "1492 voyage", "Who sailed across the Atlantic to the Americas in 1492?",
     "The explorer who sailed across the Atlantic to the Americas in 1492 was Christopher Columbus.",
     "Christopher Columbus"),
    ("person", "Microsoft", "Who founded Microsoft?", "Microsoft was founded by Bill Gates.", "Bill Gates"),
    ("person", "Apple", "Who founded Apple?", "Apple was founded by Steve Jobs.", "Steve Jobs"),
    ("person", "Facebook", "Who founded Facebook?", "Facebook was founded by Mark Zuckerberg.", "Mark Zuckerberg"),
    ("person", "World Wide Web", "Who invented the World Wide Web?",
     "The World Wide Web was invented by Tim Berners-Lee.", "Tim Berners-Lee"),
    ("person", "first in space", "Who was the first human in space?", "The first human in space was Yuri Gagarin.",
     "Yuri Gagarin"),
    ("person", "printing press", "Who invented the printing press?",
     "The printing press was invented by Johannes Gutenberg.", "Johannes Gutenberg"),
    ("person", "radium", "Who discovered radium?", "Radium was discovered by Marie Curie.", "Marie Curie"),
    ("person", "Magic Flute", "Who composed The Magic Flute?",
     "The Magic Flute was composed by Wolfgang Amadeus Mozart.", "Wolfgang Amadeus Mozart"),
    ("person", "steam engine", "Who improved the steam engine in the 1760s?",
     "The steam engine was improved in the 1760s by James Watt.", "James Watt"),
    ("person", "Churchill", "Who was the British prime minister during most of World War II?",
     "The British prime minister during most of World War II was Winston Churchill.", "Winston Churchill"),
    ("person", "polio vaccine", "Who developed the first polio vaccine?",
     "The first polio vaccine was developed by Jonas Salk.", "Jonas Salk"),
    ("person", "Fifth Symphony", "Who composed the Fifth Symphony that begins with four famous notes?",
     "The Fifth Symphony that begins with four famous notes was composed by Ludwig van Beethoven.",
     "Ludwig van Beethoven"),
    ("person", "Emancipation Proclamation", "Which US president signed the Emancipation Proclamation?",
     "The Emancipation Proclamation was signed by Abraham Lincoln.", "Abraham Lincoln"),
    ("person", "I Have a Dream", "Who gave the 'I Have a Dream' speech?",
     "The 'I Have a Dream' speech was given by Martin Luther King Jr.", "Martin Luther King Jr."),
    ("person", "Mickey Mouse", "Who created Mickey Mouse?", "Mickey Mouse was created by Walt Disney.",
     "Walt Disney"),
    ("person", "Amazon", "Who founded Amazon?", "Amazon was founded by Jeff Bezos.", "Jeff Bezos"),
    ("person", "Tesla", "Who is the chief executive of Tesla known for SpaceX?",
     "The chief executive of Tesla known for SpaceX is Elon Musk.", "Elon Musk"),
    ("person", "Napoleon", "Who was the French emperor defeated at Waterloo?",
     "The French emperor defeated at Waterloo was Napoleon Bonaparte.", "Napoleon Bonaparte"),
    ("color", "sky", "What color is the sky on a clear day?", "The sky on a clear day is blue.", "blue"),
    ("color", "grass", "What color is grass?", "Grass is green.", "green"),
    ("color", "snow", "What color is snow?", "Snow is white.", "white"),
    ("color", "banana", "What color is a ripe banana?", "A ripe banana is yellow.", "yellow"),
    ("color", "coal", "What color is coal?", "Coal is black.", "black"),
    ("color", "tomato", "What color is a ripe tomato?", "A ripe tomato is red.", "red"),
    ("color", "flamingo", "What color is a flamingo?", "A flamingo is pink.", "pink"),
    ("color", "chocolate", "What color is chocolate?", "Chocolate is brown.", "brown"),
    ("color", "stop sign", "What color is a stop sign?", "A stop sign is red.", "red"),
    ("color", "lemon", "What color is a lemon?", "A lemon is yellow.", "yellow"),
    ("color", "milk", "What color is milk?", "Milk is white.", "white"),
    ("color", "crow", "What color is a crow?", "A crow is black.", "black"),
    ("color", "pumpkin", "What color is a pumpkin?", "A pumpkin is orange.", "orange"),
    ("color", "blood", "What color is blood?", "Blood is red.", "red"),
    ("color", "emerald", "What color is an emerald?", "An emerald is green.", "green"),
    ("color", "sapphire", "What color is a sapphire?", "A sapphire is blue.", "blue"),
    ("color", "school bus", "What color is a school bus in the United States?",
     "A school bus in the United States is yellow.", "yellow"),
    ("color", "carrot", "What color is a carrot?", "A carrot is orange.", "orange"),
    ("color", "leaves", "What color are the leaves of most plants in summer?",
     "The leaves of most plants in summer are green.", "green"),
    ("color", "eggplant", "What color is an eggplant?", "An eggplant is purple.", "purple"),
    ("number", "spider legs", "How many legs does a spider have?", "A spider has 8 legs.", "8"),
    ("number", "week", "How many days are in a week?", "A week has 7 days.", "7"),
    ("number", "year months", "How many months are in a year?", "A year has 12 months.", "12"),
    ("number", "triangle", "How many sides does a triangle have?", "A triangle has 3 sides.", "3"),
    ("number", "square", "How many sides does a square have?", "A square has 4 sides.", "4"),
    ("number", "hexagon", "How many sides does a hexagon have?", "A hexagon has 6 sides.", "6"),
    ("number", "continents", "How many continents are there?", "There are 7 continents.", "7"),
    ("number", "insect legs", "How many legs does an insect have?", "An insect has 6 legs.", "6"),
    ("number", "day hours", "How many hours are in a day?", "A day has 24 hours.", "24"),
    ("number", "hour minutes", "How many minutes are in an hour?", "An hour has 60 minutes.", "60"),
    ("number", "minute seconds", "How many seconds are in a minute?", "A minute has 60 seconds.", "60"),
    ("number", "leap year", "How many days are in a leap year?", "A leap year has 366 days.", "366"),
    ("number", "year days", "How many days are in a normal year?", "A normal year has 365 days.", "365"),
    ("number", "soccer team", "How many players does a soccer team have on the field?",
     "A soccer team has 11 players on the field.", "11"),
    ("number", "guitar", "How many strings does a standard guitar have?", "A standard guitar has 6 strings.",
     "6"),
    ("number", "planets", "How many planets are in the Solar System?", "The Solar System has 8 planets.", "8"),
    ("number", "bicycle", "How many wheels does a bicycle have?", "A bicycle has 2 wheels.", "2"),
    ("number", "tricycle", "How many wheels does a tricycle have?", "A tricycle has 3 wheels.", "3"),
    ("number", "dog legs", "How many legs does a dog have?", "A dog has 4 legs.", "4"),
    ("number", "octopus", "How many arms does an octopus have?", "An octopus has 8 arms.", "8"),
    ("number", "century", "How many years are in a century?", "A century has 100 years.", "100"),
    ("number", "decade", "How many years are in a decade?", "A decade has 10 years.", "10"),
    ("number", "dollar cents", "How many cents are in a US dollar?", "A US dollar has 100 cents.", "100"),
    ("number", "alphabet", "How many letters are in the English alphabet?",
     "The English alphabet has 26 letters.", "26"),
    ("number", "rainbow", "How many colors are in a rainbow?", "A rainbow has 7 colors.", "7"),
    ("number", "octagon", "How many sides does an octagon have?", "An octagon has 8 sides.", "8"),
    ("number", "pentagon", "How many sides does a pentagon have?", "A pentagon has 5 sides.", "5"),
    ("number", "year weeks", "How many weeks are in a year?", "A year has 52 weeks.", "52"),
    ("number", "hand fingers", "How many fingers are on one human hand?", "One human hand has 5 fingers.", "5"),
    ("number", "boiling", "At how many degrees Celsius does water boil at sea level?",
     "At sea level water boils at 100 degrees Celsius.", "100"),
    ("number", "dozen", "How many items are in a dozen?", "A dozen has 12 items.", "12"),
    ("number", "chess", "How many squares are on a chessboard?", "A chessboard has 64 squares.", "64"),
    ("number", "cards", "How many cards are in a standard deck?", "A standard deck has 52 cards.", "52"),
    ("number", "heart chambers", "How many chambers does the human heart have?",
     "The human heart has 4 chambers.", "4"),
    ("number", "piano keys", "How many keys does a standard piano have?", "A standard piano has 88 keys.", "88"),
    ("planet", "Red Planet", "Which planet is known as the Red Planet?", "The planet known as the Red Planet is Mars.",
     "Mars"),
    ("planet", "largest planet", "What is the largest planet in the Solar System?",
     "The largest planet in the Solar System is Jupiter.", "Jupiter"),
    ("planet", "closest planet", "Which planet is closest to the Sun?", "The planet closest to the Sun is Mercury.",
     "Mercury"),
    ("planet", "rings", "Which planet is famous for its bright rings?",
     "The planet famous for its bright rings is Saturn.", "Saturn"),
    ("planet", "home planet", "On which planet do humans live?", "Humans live on the planet Earth.", "Earth"),
    ("planet", "hottest planet", "What is the hottest planet in the Solar System?",
     "The hottest planet in the Solar System is Venus.", "Venus"),
    ("planet", "farthest planet", "Which planet is farthest from the Sun?",
     "The planet farthest from the Sun is Neptune.", "Neptune"),
    ("nature", "ocean", "What is the largest ocean on Earth?", "The largest ocean on Earth is the Pacific Ocean.",
     "Pacific Ocean"),
    ("nature", "desert", "What is the largest hot desert in the world?",
     "The largest hot desert in the world is the Sahara.", "Sahara"),
    ("nature", "river", "What is the longest river in Africa?", "The longest river in Africa is the Nile.", "Nile"),
    ("nature", "mountain", "What is the tallest mountain in the world?",
     "The tallest mountain in the world is Mount Everest.", "Mount Everest"),
    ("nature", "continent", "What is the largest continent?", "The largest continent is Asia.", "Asia"),
    ("nature", "rainforest", "What is the largest rainforest in the world?",
     "The largest rainforest in the world is the Amazon.", "Amazon"),
    ("nature", "plants gas", "What gas do plants absorb from the air?",
     "Plants absorb carbon dioxide from the air.", "carbon dioxide"),
    ("nature", "breathe gas", "What gas do humans need to breathe?", "Humans need oxygen to breathe.", "oxygen"),
    ("nature", "star", "What is the star at the center of the Solar System?",
     "The star at the center of the Solar System is the Sun.", "Sun"),
    ("nature", "moon", "What is the natural satellite of the Earth called?",
     "The natural satellite of the Earth is called the Moon.", "Moon"),
    ("nature", "ice", "What does water turn into when it freezes?", "When it freezes, water turns into ice.", "ice"),
    ("animal", "fastest", "What is the fastest land animal?", "The fastest land animal is the cheetah.", "cheetah"),
    ("animal", "tallest", "What is the tallest animal?", "The tallest animal is the giraffe.", "giraffe"),
    ("animal", "largest mammal", "What is the largest mammal?", "The largest mammal is the blue whale.",
     "blue whale"),
    ("animal", "king of the jungle", "Which animal is called the king of the jungle?",
     "The animal called the king of the jungle is the lion.", "lion"),
    ("animal", "stripes", "Which animal has black and white stripes?",
     "The animal with black and white stripes is the zebra.", "zebra"),
    ("animal", "moo", "Which animal says moo?", "The animal that says moo is the cow.", "cow"),
    ("animal", "trunk", "Which animal has a long trunk?", "The animal with a long trunk is the elephant.",
     "elephant"),
    ("animal", "peace", "Which bird is a symbol of peace?", "The bird that is a symbol of peace is the dove.",
     "dove"),
    ("animal", "best friend", "Which animal is known as man's best friend?",
     "The animal known as man's best friend is the dog.", "dog"),
    ("animal", "largest bird", "What is the largest bird?", "The largest bird is the ostrich.", "ostrich"),
    ("animal", "quack", "Which animal quacks?", "The animal that quacks is the duck.", "duck"),
    ("animal", "hump", "Which desert animal has a hump?", "The desert animal with a hump is the camel.", "camel"),
    ("animal", "pouch", "Which Australian animal carries its baby in a pouch?",
     "The Australian animal that carries its baby in a pouch is the kangaroo.", "kangaroo"),
    ("animal", "bamboo", "Which black and white bear eats bamboo?",
     "The black and white bear that eats bamboo is the panda.", "panda"),
    ("animal", "web", "Which animal spins a web?", "The animal that spins a web is the spider.", "spider"),
    ("animal", "hop", "Which green animal croaks and hops?", "The green animal that croaks and hops is the frog.",
     "frog"),
    ("young", "kitten", "What is a baby cat called?", "A baby cat is called a kitten.", "kitten"),
    ("young", "puppy", "What is a baby dog called?", "A baby dog is called a puppy.", "puppy"),
    ("young", "lamb", "What is a baby sheep called?", "A baby sheep is called a lamb.", "lamb"),
    ("young", "calf", "What is a baby cow called?", "A baby cow is called a calf.", "calf"),
    ("young", "foal", "What is a baby horse called?", "A baby horse is called a foal.", "foal"),
    ("young", "chick", "What is a baby chicken called?", "A baby chicken is called a chick.", "chick"),
    ("food", "bees", "What do bees make?", "Bees make honey.", "honey"),
    ("food", "cows", "What drink do we get from cows?", "We get milk from cows.", "milk"),
    ("food", "hens", "What do hens lay?", "Hens lay eggs.", "eggs"),
    ("food", "monkeys", "Which yellow fruit do monkeys love to eat?",
     "The yellow fruit monkeys love to eat is the banana.", "banana"),
    ("food", "wine", "What fruit is wine made from?", "Wine is made from grapes.", "grapes"),
    ("food", "bread", "What grain is most bread made from?", "Most bread is made from wheat.", "wheat"),
    ("food", "fries", "What vegetable are french fries made from?", "French fries are made from potatoes.",
     "potatoes"),
    ("food", "guacamole", "What fruit is guacamole made from?", "Guacamole is made from avocados.", "avocados"),
    ("organ", "heart", "Which organ pumps blood through the body?", "The organ that pumps blood through the body is "
     "the heart.", "heart"),
    ("organ", "lungs", "Which organs do we use to breathe?", "The organs we use to breathe are the lungs.", "lungs"),
    ("organ", "brain", "Which organ do we think with?", "The organ we think with is the brain.", "brain"),
    ("organ", "skin", "What is the largest organ of the human body?",
     "The largest organ of the human body is the skin.", "skin"),
    ("organ", "eyes", "What do we use to see?", "We use our eyes to see.", "eyes"),
    ("organ", "ears", "What do we use to hear?", "We use our ears to hear.", "ears"),
    ("organ", "nose", "What do we use to smell?", "We use our nose to smell.", "nose"),
    ("organ", "tongue", "What do we use to taste?", "We use our tongue to taste.", "tongue"),
    ("month", "first month", "What is the first month of the year?", "The first month of the year is January.",
     "January"),
    ("month", "last month", "What is the last month of the year?", "The last month of the year is December.",
     "December"),
    ("month", "Christmas", "In which month is Christmas?", "Christmas is in December.", "December"),
    ("month", "after March", "Which month comes after March?", "The month after March is April.", "April"),
    ("month", "Halloween", "In which month is Halloween celebrated?", "Halloween is celebrated in October.",
     "October"),
    ("month", "Valentine", "In which month is Valentine's Day?", "Valentine's Day is in February.", "February"),
    ("month", "Independence Day", "In which month is US Independence Day?", "US Independence Day is in July.",
     "July"),
    ("month", "shortest month", "What is the shortest month of the year?",
     "The shortest month of the year is February.", "February"),
    ("month", "New Year", "In which month is New Year's Day?", "New Year's Day is in January.", "January"),
    ("weekday", "after Monday", "What day comes after Monday?", "The day after Monday is Tuesday.", "Tuesday"),
    ("weekday", "before Sunday", "What day comes before Sunday?", "The day before Sunday is Saturday.", "Saturday"),
    ("weekday", "after Thursday", "What day comes after Thursday?", "The day after Thursday is Friday.", "Friday"),
    ("weekday", "before Thursday", "What day comes before Thursday?", "The day before Thursday is Wednesday.",
     "Wednesday"),
    ("season", "after winter", "Which season comes after winter?", "The season after winter is spring.", "spring"),
    ("season", "coldest", "What is the coldest season of the year?", "The coldest season of the year is winter.",
     "winter"),
    ("season", "hottest", "What is the hottest season of the year?", "The hottest season of the year is summer.",
     "summer"),
    ("season", "leaves fall", "In which season do leaves fall from the trees?",
     "Leaves fall from the trees in autumn.", "autumn"),
]

_NUMBER_WORDS = {"2": "two", "3": "three", "4": "four", "5": "five", "6": "six", "7": "seven", "8": "eight",
                 "10": "ten", "11": "eleven", "12": "twelve", "24": "twenty-four", "26": "twenty-six",
                 "60": "sixty", "100": "hundred"}

_GROUPS: list[tuple[str, str, str, str]] = [
    # (category, data, question template, sentence template)
    ("capital", _CAPITALS, "What is the capital of {s}?", "The capital of {s} is {o}."),
    ("landmark", _LANDMARKS, "In which city is the {s}?", "The {s} is in the city of {o}."),
    ("language", _LANGUAGES, "What language do most people speak in {s}?", "Most people in {s} speak {o}."),
    ("continent", _CONTINENTS, "On which continent is {s}?", "{S} is on the continent of {o}."),
    ("currency", _CURRENCIES, "What is the currency of {s} called?", "The currency of {s} is the {o}."),
    ("author", _AUTHORS, "Who wrote {s}?", "{S} was written by {o}."),
    ("sport", _SPORTS, "What sport is {s} famous for playing?", "{S} is famous for playing {o}."),
    ("country", _COUNTRY_OF, "In which country is {s}?", "{S} is in {o}."),
    ("origin", _ORIGIN, "Which country is {s} most associated with?", "{S} is most associated with {o}."),
]


def _answer_re(answer: str) -> re.Pattern:
    return re.compile(rf"(?<!\w){re.escape(answer)}(?!\w)")


def _pairs(data: str) -> list[tuple[str, str]]:
    out = []
    for chunk in data.replace("\n", "").split(";"):
        if chunk.strip():
            s, o = chunk.split("|")
            out.append((s.strip(), o.strip()))
    return out


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _pick_altered(fid: str, answer: str, pool: list[str]) -> str:
    """A deterministic different answer of the same group (same type)."""
    options = sorted({a for a in pool if normalize_answer(a) != normalize_answer(answer)})
    h = int(hashlib.sha256(fid.encode()).hexdigest(), 16)
    return options[h % len(options)]


def _aliases(category: str, answer: str) -> tuple[str, ...]:
    out: list[str] = []
    if category in ("author", "person") and " " in answer:
        out.append(answer.split()[-1] if not answer.endswith("Jr.") else "King")
    if answer in _NUMBER_WORDS:
        out.append(_NUMBER_WORDS[answer])
    if answer.endswith(" Ocean"):
        out.append(answer.removesuffix(" Ocean"))
    if category == "sport" and answer == "football":
        out.append("soccer")
    return tuple(out)


@lru_cache(maxsize=1)
def candidate_facts() -> tuple[Fact, ...]:
    """Every candidate fact (before checking which ones the model knows), in a fixed order."""
    facts: list[Fact] = []
    for category, data, qt, st in _GROUPS:
        pairs = _pairs(data)
        pool = [o for _, o in pairs]
        for s, o in pairs:
            fid = f"{category}:{s}"
            facts.append(Fact(fid, category, s, qt.format(s=s), o, st.format(s=s, S=_cap(s), o=o),
                              _pick_altered(fid, o, pool), _aliases(category, o)))
    by_cat: dict[str, list[str]] = {}
    for cat, _, _, _, ans in _FREE:
        by_cat.setdefault(cat, []).append(ans)
    for cat, topic, q, sent, ans in _FREE:
        fid = f"{cat}:{topic}"
        facts.append(Fact(fid, cat, topic, q, ans, sent, _pick_altered(fid, ans, by_cat[cat]), _aliases(cat, ans)))
    # The table's invariant: the answer is stated exactly once (else the altered sentence would be ambiguous).
    return tuple(f for f in facts if len(_answer_re(f.answer).findall(f.sentence)) == 1)


KNOWN_FILE = "facts_smollm2.json"


@lru_cache(maxsize=1)
def known_ids() -> frozenset[str] | None:
    """Ids of the facts SmolLM2-135M-Instruct answered right closed-book (None if never measured)."""
    try:
        text = resources.files("carelab").joinpath("data", KNOWN_FILE).read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return None
    return frozenset(json.loads(text)["known"])


def fact_table(known_only: bool = True) -> list[Fact]:
    """The fact table; by default only the facts the embedded model is measured to know."""
    facts = list(candidate_facts())
    known = known_ids()
    if known_only and known is not None:
        facts = [f for f in facts if f.id in known]
    return facts
