"""Rule tables of the template backend: word swaps, insertable phrases and instruction wordings.

Kept apart from the engine (llm/template_backend.py) so the tables can grow without touching logic.
Swaps are word-for-word where possible, because Prompt-to-Prompt's `replace` edit wants equal word
counts; phrases are inserted whole, which gives a `refine` edit.
"""

from __future__ import annotations

#: Colour words and what they may become.
COLOURS = {
    "red": ["blue", "green", "yellow", "purple", "black"],
    "blue": ["red", "green", "orange", "pink", "yellow"],
    "green": ["red", "blue", "purple", "orange", "yellow"],
    "yellow": ["blue", "red", "green", "purple", "pink"],
    "purple": ["green", "yellow", "red", "blue", "orange"],
    "pink": ["blue", "green", "yellow", "purple", "red"],
    "black": ["white", "red", "blue", "green", "silver"],
    "white": ["black", "red", "blue", "pink", "yellow"],
    "grey": ["red", "blue", "yellow", "green", "pink"],
    "gray": ["red", "blue", "yellow", "green", "pink"],
    "brown": ["black", "white", "red", "blue", "green"],
    "beige": ["black", "red", "navy", "green", "pink"],
    "navy": ["red", "green", "yellow", "pink", "white"],
    "turquoise": ["red", "purple", "orange", "yellow", "pink"],
    "teal": ["red", "purple", "orange", "yellow", "pink"],
}

#: Materials (adjective form) and their swaps.
MATERIALS = {
    "wooden": ["metal", "glass", "marble", "stone"],
    "wood": ["metal", "glass", "marble", "stone"],
    "metal": ["wooden", "glass", "golden", "stone"],
    "leather": ["canvas", "denim", "suede", "velvet"],
    "cotton": ["silk", "linen", "wool", "velvet"],
    "silk": ["velvet", "cotton", "satin", "linen"],
    "wool": ["silk", "cotton", "leather", "denim"],
    "denim": ["leather", "velvet", "silk", "corduroy"],
    "velvet": ["satin", "silk", "denim", "leather"],
    "glass": ["ceramic", "wooden", "metal", "crystal"],
    "ceramic": ["glass", "wooden", "metal", "stone"],
    "plastic": ["wooden", "metal", "glass", "ceramic"],
    "gold": ["silver", "copper", "platinum", "bronze"],
    "golden": ["silver", "copper", "bronze", "wooden"],
    "silver": ["gold", "copper", "bronze", "platinum"],
    "steel": ["copper", "brass", "wooden", "gold"],
    "stone": ["brick", "wooden", "marble", "glass"],
    "brick": ["stone", "wooden", "glass", "concrete"],
    "marble": ["wooden", "granite", "glass", "concrete"],
    "concrete": ["wooden", "brick", "stone", "glass"],
    "straw": ["felt", "leather", "wool", "denim"],
}

#: Nouns and what they may become: (singular, plural) pairs on both sides.
OBJECTS: dict[str, list[str]] = {
    "cat": ["dog", "fox", "rabbit", "lion cub"],
    "kitten": ["puppy", "bunny", "fox cub"],
    "dog": ["cat", "wolf", "fox", "bear cub"],
    "puppy": ["kitten", "bunny", "lamb"],
    "horse": ["zebra", "camel", "unicorn"],
    "cow": ["horse", "sheep", "goat"],
    "sheep": ["goat", "cow", "alpaca"],
    "bird": ["butterfly", "parrot", "owl"],
    "owl": ["eagle", "parrot", "crow"],
    "duck": ["swan", "goose", "flamingo"],
    "lion": ["tiger", "leopard", "bear"],
    "tiger": ["lion", "leopard", "panda"],
    "bear": ["panda", "wolf", "gorilla"],
    "elephant": ["rhino", "hippo", "giraffe"],
    "fish": ["turtle", "jellyfish", "octopus"],
    "spider": ["ladybug", "beetle", "butterfly"],
    "dragonfly": ["butterfly", "bee", "hummingbird"],
    "butterfly": ["dragonfly", "bee", "moth"],
    "dragon": ["phoenix", "dinosaur", "griffin"],
    "dinosaur": ["dragon", "robot", "elephant"],
    "man": ["woman", "robot", "boy"],
    "woman": ["man", "robot", "girl"],
    "boy": ["girl", "robot", "old man"],
    "girl": ["boy", "robot", "old woman"],
    "car": ["truck", "bus", "motorcycle", "tractor"],
    "truck": ["car", "bus", "tractor"],
    "bicycle": ["motorcycle", "scooter", "horse"],
    "bike": ["motorcycle", "scooter", "horse"],
    "boat": ["kayak", "canoe", "submarine"],
    "ship": ["sailboat", "submarine", "yacht"],
    "train": ["bus", "tram", "truck"],
    "apple": ["orange", "pear", "peach"],
    "banana": ["pineapple", "mango", "cucumber"],
    "strawberry": ["cherry", "raspberry", "blueberry"],
    "pumpkin": ["watermelon", "cabbage", "melon"],
    "cake": ["pie", "pizza", "stack of pancakes"],
    "pizza": ["burger", "cake", "pie"],
    "burger": ["pizza", "sandwich", "hot dog"],
    "coffee": ["tea", "hot chocolate", "orange juice"],
    "tea": ["coffee", "hot chocolate", "lemonade"],
    "chair": ["stool", "armchair", "bench"],
    "sofa": ["armchair", "bench", "hammock"],
    "couch": ["armchair", "bench", "hammock"],
    "table": ["desk", "bench", "piano"],
    "lamp": ["candle", "lantern", "plant"],
    "house": ["castle", "cabin", "lighthouse", "barn"],
    "cottage": ["castle", "cabin", "lighthouse"],
    "cabin": ["castle", "cottage", "tent"],
    "church": ["castle", "temple", "mosque"],
    "castle": ["palace", "cabin", "pyramid"],
    "tree": ["palm tree", "cactus", "lamppost"],
    "rose": ["tulip", "sunflower", "lily"],
    "tulip": ["rose", "sunflower", "daisy"],
    "sunflower": ["rose", "tulip", "daisy"],
    "flower": ["butterfly", "candle", "star"],
    "dress": ["skirt", "suit", "jumpsuit"],
    "shirt": ["sweater", "jacket", "hoodie"],
    "jacket": ["coat", "sweater", "vest"],
    "coat": ["jacket", "cape", "poncho"],
    "hat": ["cap", "helmet", "crown"],
    "shoe": ["boot", "sandal", "slipper"],
    "boot": ["sneaker", "sandal", "slipper"],
    "sneaker": ["boot", "sandal", "slipper"],
    "guitar": ["violin", "cello", "banjo"],
    "violin": ["guitar", "cello", "trumpet"],
    "piano": ["harp", "organ", "drum kit"],
    "mug": ["teacup", "glass", "bowl"],
    "cup": ["glass", "mug", "bowl"],
    "bottle": ["jar", "vase", "can"],
    "vase": ["jar", "bottle", "basket"],
    "basket": ["bucket", "box", "bowl"],
    "candle": ["lantern", "lamp", "flower"],
    "clock": ["compass", "mirror", "globe"],
    "laptop": ["typewriter", "tablet", "book"],
    "umbrella": ["parasol", "balloon", "kite"],
    "ball": ["balloon", "apple", "globe"],
    "balloon": ["kite", "ball", "lantern"],
    "bridge": ["tunnel", "dam", "pier"],
    "mountain": ["volcano", "glacier", "hill"],
    "lake": ["river", "pond", "glacier"],
    "river": ["canal", "road", "stream"],
    "road": ["river", "railway", "path"],
    "pendant": ["locket", "medallion", "charm"],
    "necklace": ["bracelet", "scarf", "chain"],
    "ring": ["bracelet", "crown", "coin"],
    "earring": ["ring", "brooch", "pin"],
}

#: Irregular and "-es" plurals; other nouns take "s".
PLURALS = {
    "man": "men", "woman": "women", "sheep": "sheep", "fish": "fish", "mouse": "mice",
    "child": "children", "puppy": "puppies", "butterfly": "butterflies", "strawberry": "strawberries",
    "dragonfly": "dragonflies", "raspberry": "raspberries", "blueberry": "blueberries", "cherry": "cherries",
    "bus": "buses", "peach": "peaches", "sandwich": "sandwiches", "box": "boxes", "couch": "couches",
    "church": "churches", "glass": "glasses", "cactus": "cacti", "wolf": "wolves", "lily": "lilies",
    "daisy": "daisies", "pony": "ponies", "bench": "benches", "torch": "torches", "watch": "watches",
    "hippo": "hippos", "rhino": "rhinos", "mango": "mangoes", "goose": "geese", "octopus": "octopuses",
    "jellyfish": "jellyfish", "bunny": "bunnies", "dress": "dresses", "tomato": "tomatoes",
    "alpaca": "alpacas", "pass": "passes",
}

SEASONS = {
    "winter": ["summer", "spring", "autumn"],
    "summer": ["winter", "autumn", "spring"],
    "spring": ["autumn", "winter", "summer"],
    "autumn": ["spring", "winter", "summer"],
    "fall": ["spring", "winter", "summer"],
}
TIMES = {
    "night": ["sunset", "sunrise", "noon"],
    "sunset": ["sunrise", "night", "noon"],
    "sunrise": ["sunset", "night", "noon"],
    "morning": ["evening", "night", "sunset"],
    "evening": ["morning", "noon", "sunrise"],
    "dawn": ["dusk", "night", "noon"],
    "dusk": ["dawn", "noon", "night"],
    "noon": ["midnight", "sunset", "dusk"],
    "midnight": ["noon", "sunrise", "dawn"],
    "nighttime": ["daytime"],
    "daytime": ["nighttime"],
}
WEATHER = {
    "sunny": ["rainy", "snowy", "foggy", "stormy"],
    "rainy": ["sunny", "snowy", "foggy"],
    "snowy": ["sunny", "rainy", "foggy"],
    "foggy": ["sunny", "snowy", "rainy"],
    "misty": ["sunny", "snowy", "rainy"],
    "cloudy": ["sunny", "stormy", "snowy"],
    "stormy": ["sunny", "calm", "snowy"],
    "rain": ["snow", "fog", "sunshine"],
    "snow": ["rain", "sand", "fog"],
    "fog": ["snow", "rain", "sunshine"],
}
#: Expression / pose word -> [(replacement, verb phrase for "make the X ...")].
POSES: dict[str, list[tuple[str, str]]] = {
    "smiling": [("laughing", "laugh"), ("frowning", "frown"), ("crying", "cry")],
    "laughing": [("crying", "cry"), ("frowning", "frown"), ("yawning", "yawn")],
    "crying": [("laughing", "laugh"), ("smiling", "smile")],
    "happy": [("sad", "look sad"), ("angry", "look angry"), ("surprised", "look surprised")],
    "sad": [("happy", "look happy"), ("surprised", "look surprised")],
    "angry": [("happy", "look happy"), ("calm", "look calm")],
    "serious": [("smiling", "smile"), ("laughing", "laugh")],
    "sitting": [("standing", "stand up"), ("lying", "lie down"), ("jumping", "jump")],
    "standing": [("sitting", "sit down"), ("jumping", "jump"), ("dancing", "dance")],
    "running": [("walking", "walk"), ("jumping", "jump"), ("dancing", "dance")],
    "walking": [("running", "run"), ("dancing", "dance"), ("sitting", "sit down")],
    "sleeping": [("yawning", "yawn"), ("playing", "play"), ("eating", "eat")],
    "jumping": [("sitting", "sit down"), ("running", "run"), ("sleeping", "sleep")],
    "dancing": [("sitting", "sit down"), ("sleeping", "sleep"), ("running", "run")],
    "lying": [("sitting", "sit up"), ("standing", "stand up"), ("jumping", "jump")],
}
#: Art medium words and single-word replacements.
MEDIA = {
    "photo": ["painting", "watercolor", "sketch", "mosaic", "drawing"],
    "photograph": ["painting", "watercolor", "sketch", "drawing"],
    "painting": ["photograph", "mosaic", "sketch", "tapestry"],
    "drawing": ["painting", "photograph", "mosaic", "watercolor"],
    "sketch": ["painting", "watercolor", "photograph"],
    "watercolor": ["sketch", "photograph", "mosaic"],
    "watercolour": ["sketch", "photograph", "mosaic"],
    "illustration": ["photograph", "painting", "mosaic"],
    "cartoon": ["photograph", "painting", "sculpture"],
}

#: Style phrases appended to any caption (the universal fallback): (phrase, instruction).
STYLES = [
    ("watercolor painting", "turn it into a watercolor painting"),
    ("oil painting", "make it an oil painting"),
    ("pencil sketch", "make it a pencil sketch"),
    ("pixel art", "make it pixel art"),
    ("in the style of Van Gogh", "make it look like a Van Gogh painting"),
    ("ukiyo-e woodblock print", "turn it into a Japanese woodblock print"),
    ("stained glass", "make it look like stained glass"),
    ("in anime style", "make it anime style"),
    ("low poly 3d render", "make it a low poly 3D render"),
    ("vintage photograph", "make it look like an old vintage photo"),
    ("made of lego bricks", "make it out of lego bricks"),
    ("in claymation style", "make it look like claymation"),
    ("charcoal drawing", "turn it into a charcoal drawing"),
    ("neon cyberpunk style", "give it a neon cyberpunk look"),
]
#: Scene phrases (weather, season, time of day) for outdoor captions: (phrase, instruction, family).
SCENES = [
    ("at night", "make it night", "time_of_day"),
    ("at sunset", "make it sunset", "time_of_day"),
    ("at sunrise", "show it at sunrise", "time_of_day"),
    ("in the snow", "make it snow", "weather"),
    ("in the rain", "make it rain", "weather"),
    ("in thick fog", "make it foggy", "weather"),
    ("during a thunderstorm", "add a thunderstorm", "weather"),
    ("in autumn", "make it autumn", "season"),
    ("in winter", "make it winter", "season"),
    ("in spring with cherry blossoms", "make it spring with cherry blossoms", "season"),
]
#: Objects to add, by context: (phrase inserted, instruction).
ADD_PERSON = [
    ("wearing sunglasses", "give {them} sunglasses"),
    ("wearing a straw hat", "put a straw hat on {them}"),
    ("wearing a red scarf", "add a red scarf"),
    ("holding an umbrella", "give {them} an umbrella"),
    ("with a parrot on the shoulder", "add a parrot on {their} shoulder"),
]
ADD_ANIMAL = [
    ("wearing a tiny crown", "put a tiny crown on the {noun}"),
    ("wearing a red bow tie", "give the {noun} a red bow tie"),
    ("with a butterfly nearby", "add a butterfly near the {noun}"),
    ("wearing sunglasses", "give the {noun} sunglasses"),
]
ADD_OUTDOOR = [
    ("with a rainbow in the sky", "add a rainbow"),
    ("with a hot air balloon in the sky", "add a hot air balloon in the sky"),
    ("with birds flying overhead", "add birds flying in the sky"),
    ("with fireworks in the sky", "add fireworks"),
    ("with a full moon", "add a full moon in the sky"),
]
ADD_THING = [
    ("next to a vase of flowers", "add a vase of flowers next to it"),
    ("with a cat beside it", "add a cat beside it"),
    ("surrounded by autumn leaves", "put autumn leaves around it"),
    ("with confetti", "add confetti"),
]
#: Settings that can be swapped: noun -> preposition phrase used when moving there.
SETTINGS = {
    "park": "in the park", "beach": "on the beach", "forest": "in the forest", "city": "in the city",
    "desert": "in the desert", "garden": "in the garden", "street": "on the street",
    "kitchen": "in the kitchen", "office": "in the office", "meadow": "in a meadow",
    "field": "in a field", "mountains": "in the mountains", "jungle": "in the jungle",
    "snow": "in the snow", "studio": "in a studio", "countryside": "in the countryside",
}
#: Background phrases of product shots, replaced by a setting.
PRODUCT_BACKGROUNDS = [
    ("on a wooden table", "put it on a wooden table"),
    ("on a sandy beach", "place it on a sandy beach"),
    ("on a marble countertop", "put it on a marble countertop"),
    ("in a lush forest", "put it in a forest"),
    ("on a city street", "put it on a city street"),
]

PERSON_WORDS = {
    "man", "woman", "men", "women", "boy", "girl", "boys", "girls", "person", "people", "child", "children",
    "kid", "kids", "baby", "bride", "groom", "couple", "lady", "guy", "businessman", "businesswoman",
    "model", "actor", "actress", "singer", "player", "teenager", "family", "mother", "father", "student",
}
ANIMAL_WORDS = {
    "cat", "dog", "kitten", "puppy", "horse", "cow", "sheep", "bird", "owl", "duck", "lion", "tiger",
    "bear", "elephant", "fox", "rabbit", "bunny", "deer", "wolf", "parrot", "goat", "pig", "monkey",
    "giraffe", "zebra", "squirrel", "schnauzer", "retriever", "terrier", "poodle", "bulldog", "labrador",
}
OUTDOOR_WORDS = {
    "beach", "mountain", "mountains", "sky", "lake", "river", "forest", "street", "city", "park", "field",
    "garden", "sea", "ocean", "landscape", "skyline", "bridge", "road", "village", "valley", "island",
    "waterfall", "desert", "meadow", "countryside", "coast", "harbor", "harbour", "canyon", "hill", "hills",
    "trees", "tree", "castle", "church", "tower", "square", "building", "house", "cottage", "farm", "outdoors",
    "outdoor", "town", "london", "paris", "york", "rome", "venice", "tokyo", "lighthouse", "cathedral",
}
#: Stop words after which the next word is not the edited object's noun.
STOPWORDS = {
    "a", "an", "the", "and", "or", "of", "in", "on", "at", "to", "for", "with", "by", "from", "is", "are",
    "it", "its", "this", "that", "as", "&", "-", "size", "color", "colour",
}
#: Words that end the object phrase of a "with ..." removal.
PHRASE_BREAKS = STOPWORDS | {"in", "at", "on", "for", "from", "by", "near", "over", "under", "and", "while"}

#: Multi-word names never edited (brands, teams, titles) even though they contain table words.
PROTECTED_PHRASES = [
    "red bull", "red hat", "red sox", "red cross", "red carpet", "red velvet", "white house", "white sox",
    "black friday", "black panther", "black sabbath", "black & decker", "black and decker", "blue jays",
    "green bay", "green day", "pink floyd", "golden gate", "gold coast", "golden state", "golden globe",
    "silver surfer", "snow white", "apple watch", "apple iphone", "apple ipad", "apple macbook",
    "orange county", "orange is the new black", "the walking dead", "game of thrones", "blue ivy",
    "grey's anatomy", "gray's anatomy", "fifty shades", "winter park", "summer of", "spring break",
    "the lion king", "the cat in the hat", "dragon ball", "spider-man", "spider man", "batman",
    "white wine", "red wine", "black tea", "green tea", "white chocolate", "dark chocolate",
    "black belt", "green card", "blue cheese", "white paper", "yellow pages", "real estate",
    "night light", "world cup", "coffee table", "tea party", "tea towel", "table tennis", "pumpkin spice",
]

STOCK_SUFFIXES = (
    "stock photo", "stock photos", "stock image", "stock images", "stockfoto", "stock photography",
    "royalty free image", "royalty free stock photo", "royalty free", "stock vector", "stock illustration",
    "photo stock", "images", "image", "photo", "wallpaper", "hd wallpaper", "free download",
)

#: Which edit type (prompts/taxonomy.py) each rule family makes.
FAMILY_TYPES = {
    "attribute_colour": "colour", "attribute_material": "material_texture", "attribute_size": "size_shape",
    "object_swap": "replace_object", "season": "weather_season_time", "time_of_day": "weather_season_time",
    "weather": "weather_season_time", "expression": "expression", "pose": "action_pose",
    "style_medium": "style_medium", "background_setting": "background", "remove_object": "remove_object",
    "add_object": "add_object", "count": "count_quantity", "text": "text_in_image", "tone": "global_tone_lighting",
}
#: POSES words that are facial expressions (the others are actions or poses).
EXPRESSION_WORDS = {"smiling", "laughing", "crying", "happy", "sad", "angry", "serious", "frowning", "yawning"}
#: Size words and their swaps.
SIZES = {
    "small": ["huge", "giant"], "little": ["huge", "giant"], "tiny": ["huge", "giant"], "mini": ["giant", "huge"],
    "big": ["tiny", "small"], "large": ["tiny", "small"], "huge": ["tiny", "small"], "giant": ["tiny", "small"],
}
#: Number words and what they may become (count edits).
NUMBERS = {
    "one": ["two", "three"], "two": ["three", "four"], "three": ["two", "five"], "four": ["two", "six"],
    "five": ["two", "three"], "six": ["three", "two"], "single": ["two", "three"], "pair": ["trio"],
}
#: Things that carry text, and the words written on them (text edits).
TEXT_CARRIERS = {"sign", "poster", "t-shirt", "shirt", "mug", "banner", "card", "cover", "label", "billboard",
                 "board", "chalkboard", "cake", "wall", "door", "book", "bag", "cup", "box", "menu"}
TEXT_WORDS = ["HELLO", "OPEN", "SALE", "LOVE", "SUMMER", "WELCOME", "HOME", "CAFE"]
#: Global tone and lighting phrases: (phrase inserted, instruction).
TONES = [
    ("in black and white", "make it black and white"),
    ("in warm golden light", "give it warm golden lighting"),
    ("with dramatic lighting", "add dramatic lighting"),
    ("in soft pastel tones", "give it soft pastel tones"),
    ("with high contrast", "make it high contrast"),
    ("in cool blue tones", "give it a cool blue tone"),
]
#: The instruction that undoes inserting each scene (SCENES) or tone (TONES) phrase (`instruct.inverse`).
PHRASE_INVERSES = {
    "at night": "make it daytime", "at sunset": "make it daytime", "at sunrise": "make it full daylight",
    "in the snow": "remove the snow", "in the rain": "make it stop raining", "in thick fog": "clear the fog",
    "during a thunderstorm": "remove the thunderstorm", "in autumn": "remove the autumn colors",
    "in winter": "remove the winter snow and frost", "in spring with cherry blossoms": "remove the cherry blossoms",
    "in black and white": "bring back the colors", "in warm golden light": "remove the warm golden light",
    "with dramatic lighting": "remove the dramatic lighting", "in soft pastel tones": "remove the pastel tones",
    "with high contrast": "lower the contrast", "in cool blue tones": "remove the cool blue tone",
}
